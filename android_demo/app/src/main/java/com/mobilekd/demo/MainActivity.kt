package com.mobilekd.demo

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Color
import android.graphics.Matrix
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageCapture
import androidx.camera.core.ImageCaptureException
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import com.google.android.material.materialswitch.MaterialSwitch
import com.mobilekd.core.CosineIndex
import com.mobilekd.core.GalleryIndex
import com.mobilekd.core.MobileKdException
import java.io.File
import java.util.concurrent.Executors

/**
 * Index photos from the gallery (photo picker) or the bundled assets/gallery/, then search with a photo from the
 * gallery or the camera: top-k by cosine similarity with scores, and the per-image latency (preprocessing and
 * inference separately). The model is assets/model.tflite + assets/model.json, or a pair the user loads.
 *
 * assets/ is the android/ folder `python -m export.android` (or `mobilekd ship`) writes: with a prebuilt gallery
 * (assets/gallery/gallery.json: embeddings, ids, thumbnails made by that model) the index starts from it, with no
 * inference at start-up; a gallery/ of plain photos is embedded on the device instead.
 */
class MainActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()
    private var embedder: Embedder? = null
    private var index: CosineIndex? = null
    private var modelBytes: ByteArray? = null
    private var contractJson: String? = null
    /** What became of assets/gallery/gallery.json, shown under the status (null: there is none). */
    private var galleryNote: String? = null

    private lateinit var status: TextView
    private lateinit var latency: TextView
    private lateinit var results: LinearLayout
    private lateinit var queryView: ImageView
    private lateinit var gpuSwitch: MaterialSwitch
    private lateinit var cameraPanel: View
    private var imageCapture: ImageCapture? = null

    private val thumbs by lazy { File(filesDir, "thumbs").apply { mkdirs() } }
    private val indexFile by lazy { File(filesDir, "index.bin") }

    private val pickGallery = registerForActivityResult(ActivityResultContracts.PickMultipleVisualMedia(200)) { uris ->
        if (uris.isNotEmpty()) addToIndex(uris)
    }
    private val pickQuery = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) background { search(AndroidImageDecoder.decodeBitmap(contentResolver, uri)) }
    }
    private val pickModel = registerForActivityResult(ActivityResultContracts.OpenMultipleDocuments()) { uris ->
        if (uris.isNotEmpty()) loadUserModel(uris)
    }
    private val cameraPermission = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) openCamera() else showError("camera permission denied")
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        latency = findViewById(R.id.latency)
        results = findViewById(R.id.results)
        queryView = findViewById(R.id.query)
        gpuSwitch = findViewById(R.id.gpu)
        cameraPanel = findViewById(R.id.cameraPanel)

        findViewById<Button>(R.id.addPhotos).setOnClickListener {
            pickGallery.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        findViewById<Button>(R.id.searchPhoto).setOnClickListener {
            pickQuery.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        findViewById<Button>(R.id.searchCamera).setOnClickListener {
            if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) openCamera()
            else cameraPermission.launch(Manifest.permission.CAMERA)
        }
        findViewById<Button>(R.id.capture).setOnClickListener { capture() }
        findViewById<Button>(R.id.loadModel).setOnClickListener { pickModel.launch(arrayOf("*/*")) }
        findViewById<Button>(R.id.clearIndex).setOnClickListener {
            background {
                embedder?.let { index = CosineIndex(it.contract.embedDim, modelTag(it)) }
                indexFile.delete(); thumbs.listFiles()?.forEach { it.delete() }
                ui { results.removeAllViews(); showStatus() }
            }
        }
        gpuSwitch.setOnCheckedChangeListener { _, _ -> background { openModel() } }

        background {
            modelBytes = assets.open("model.tflite").use { it.readBytes() }
            contractJson = assets.open("model.json").use { it.bufferedReader().readText() }
            openModel()
        }
    }

    override fun onDestroy() {
        worker.shutdown()
        embedder?.close()
        super.onDestroy()
    }

    // ---------------------------------------------------------------------------------------------- model

    private fun modelTag(e: Embedder) = e.contract.modelSha256 ?: (e.contract.source["sha256"]?.toString() ?: "") + "/" +
        e.contract.precision

    /** (Re)creates the interpreter for the current model and accelerator; loads the saved index if it matches. */
    private fun openModel() {
        val bytes = modelBytes ?: return
        val json = contractJson ?: return
        embedder?.close()
        embedder = null
        val e = Embedder(bytes, json, useGpu = gpuSwitch.isChecked)
        embedder = e
        val tag = modelTag(e)
        index = try {
            if (indexFile.isFile) indexFile.inputStream().use { CosineIndex.load(it, tag) } else null
        } catch (ex: MobileKdException) {
            null  // made by another model: start over
        } ?: CosineIndex(e.contract.embedDim, tag)
        if (index!!.size == 0) {
            if (hasPrebuiltGallery()) loadPrebuiltGallery(e) else indexBundledGallery(e)
        }
        ui { showStatus() }
    }

    private fun loadUserModel(uris: List<Uri>) = background {
        var model: ByteArray? = null
        var json: String? = null
        for (uri in uris) {
            val bytes = contentResolver.openInputStream(uri)!!.use { it.readBytes() }
            if (bytes.size >= 8 && String(bytes, 4, 4, Charsets.US_ASCII) == "TFL3") model = bytes
            else json = String(bytes, Charsets.UTF_8)
        }
        if (model == null || json == null) throw MobileKdException("pick both the .tflite file and its model.json")
        modelBytes = model
        contractJson = json
        indexFile.delete()
        openModel()
    }

    private fun hasPrebuiltGallery() = assets.list("gallery")?.contains("gallery.json") == true

    /**
     * Starts the index from assets/gallery/ as exported (GalleryIndex checks it was made by this model: same
     * model_sha256 and dimension). Its hits carry the thumbnail's asset path, "asset:gallery/thumbs/…|id". A
     * gallery of another model (e.g. after "Load model file…") is skipped with a message, the model still works.
     */
    private fun loadPrebuiltGallery(e: Embedder) {
        val gallery = try {
            GalleryIndex.load({ name -> assets.open("gallery/$name") }, e.contract)
        } catch (ex: MobileKdException) {
            galleryNote = "prebuilt gallery not used: ${ex.message}"
            return
        }
        galleryNote = "prebuilt gallery: ${gallery.size} photos (${gallery.precision})"
        val idx = index!!
        for (i in 0 until gallery.size)
            idx.add("asset:gallery/${gallery.thumbnails[i]}|${gallery.ids[i]}", gallery.vector(i))
        saveIndex()
    }

    private fun indexBundledGallery(e: Embedder) {
        val names = assets.list("gallery")?.filter { it.lowercase().matches(Regex(".*\\.(jpe?g|png|webp)")) } ?: return
        for (name in names) {
            val bitmap = AndroidImageDecoder.decodeBitmap(assets.open("gallery/$name").use { it.readBytes() })
            addBitmap(e, bitmap, "asset:$name")
        }
        saveIndex()
    }

    // ---------------------------------------------------------------------------------------------- index + search

    private fun addBitmap(e: Embedder, bitmap: Bitmap, label: String) {
        val emb = e.embed(bitmap)
        val idx = index!!
        val thumb = File(thumbs, "${idx.size}.jpg")
        thumb.outputStream().use { scaled(bitmap, 256).compress(Bitmap.CompressFormat.JPEG, 85, it) }
        idx.add("${thumb.name}|$label", emb.vector)
    }

    private fun addToIndex(uris: List<Uri>) = background {
        val e = embedder ?: throw MobileKdException("no model loaded")
        var total = 0.0
        var failed = 0
        for ((i, uri) in uris.withIndex()) {
            try {
                val t0 = System.nanoTime()
                addBitmap(e, AndroidImageDecoder.decodeBitmap(contentResolver, uri), uri.toString())
                total += (System.nanoTime() - t0) / 1e6
            } catch (ex: MobileKdException) {
                failed++
            }
            ui { status.text = "indexing ${i + 1} / ${uris.size}…" }
        }
        saveIndex()
        val ok = uris.size - failed
        ui {
            showStatus()
            latency.text = "indexed $ok photos, %.1f ms per photo (decode + preprocess + inference)".format(total / maxOf(ok, 1)) +
                if (failed > 0) "; $failed could not be decoded" else ""
        }
    }

    private fun saveIndex() {
        val tmp = File(filesDir, "index.bin.tmp")
        tmp.outputStream().use { index!!.save(it) }
        tmp.renameTo(indexFile)
    }

    private fun search(query: Bitmap) {
        val e = embedder ?: throw MobileKdException("no model loaded")
        val emb = e.embed(query)
        val hits = index!!.search(emb.vector, 10)  // EmptyIndexException: "the index is empty: add images…"
        ui {
            queryView.setImageBitmap(scaled(query, 512))
            latency.text = "inference %.2f ms + preprocessing %.2f ms (%s)".format(emb.inferenceMs, emb.preprocessMs, e.accelerator)
            results.removeAllViews()
            for (hit in hits) {
                val row = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL; setPadding(0, 8, 0, 8) }
                val image = ImageView(this).apply {
                    layoutParams = LinearLayout.LayoutParams(200, 200)
                    scaleType = ImageView.ScaleType.CENTER_CROP
                    val thumb = hit.id.substringBefore('|')
                    if (thumb.startsWith("asset:")) setImageBitmap(assets.open(thumb.removePrefix("asset:")).use { BitmapFactory.decodeStream(it) })
                    else setImageURI(Uri.fromFile(File(thumbs, thumb)))
                }
                val text = TextView(this).apply {
                    text = "cosine %.3f\n%s".format(hit.score, hit.id.substringAfter('|'))
                    setPadding(16, 0, 0, 0)
                }
                row.addView(image); row.addView(text)
                results.addView(row)
            }
        }
    }

    // ---------------------------------------------------------------------------------------------- camera

    private fun openCamera() {
        cameraPanel.visibility = View.VISIBLE
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val preview = Preview.Builder().build().also {
                it.setSurfaceProvider(findViewById<PreviewView>(R.id.preview).surfaceProvider)
            }
            imageCapture = ImageCapture.Builder().setCaptureMode(ImageCapture.CAPTURE_MODE_MINIMIZE_LATENCY).build()
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, imageCapture)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun capture() {
        val capture = imageCapture ?: return
        capture.takePicture(worker, object : ImageCapture.OnImageCapturedCallback() {
            override fun onCaptureSuccess(image: ImageProxy) {
                val rotation = image.imageInfo.rotationDegrees
                val raw = image.toBitmap()
                image.close()
                val bitmap = if (rotation == 0) raw else
                    Bitmap.createBitmap(raw, 0, 0, raw.width, raw.height, Matrix().apply { postRotate(rotation.toFloat()) }, true)
                ui {
                    ProcessCameraProvider.getInstance(this@MainActivity).get().unbindAll()
                    cameraPanel.visibility = View.GONE
                }
                guarded { search(bitmap) }
            }

            override fun onError(exception: ImageCaptureException) = showError("capture failed: ${exception.message}")
        })
    }

    // ---------------------------------------------------------------------------------------------- helpers

    private fun showStatus() {
        val e = embedder ?: return
        val c = e.contract
        status.setTextColor(Color.DKGRAY)
        status.text = "model ${c.modelFile}: ${c.runtime} ${c.precision}, input ${c.input.dtype} ${c.input.layout} " +
            "${c.input.shape}, embed_dim ${c.embedDim}, ${e.accelerator}\nindex: ${index?.size ?: 0} photos" +
            (galleryNote?.let { "\n$it" } ?: "")
    }

    private fun showError(message: String) = ui {
        status.setTextColor(Color.RED)
        status.text = message
    }

    private fun scaled(b: Bitmap, max: Int): Bitmap {
        val s = max.toFloat() / maxOf(b.width, b.height)
        return if (s >= 1f) b else Bitmap.createScaledBitmap(b, (b.width * s).toInt().coerceAtLeast(1), (b.height * s).toInt().coerceAtLeast(1), true)
    }

    private fun ui(block: () -> Unit) = runOnUiThread(block)

    /** Runs on the worker thread; every error ends up on screen (contract/model mismatch, decode errors, ...). */
    private fun background(block: () -> Unit) = worker.execute { guarded(block) }

    private fun guarded(block: () -> Unit) {
        try {
            block()
        } catch (e: java.io.FileNotFoundException) {
            showError("missing file: ${e.message}\nCopy model.tflite and model.json into app/src/main/assets/ (see README) or use \"Load model file…\".")
        } catch (e: MobileKdException) {
            showError(e.message ?: e.toString())
        } catch (e: Exception) {
            showError("${e.javaClass.simpleName}: ${e.message}")
        }
    }
}

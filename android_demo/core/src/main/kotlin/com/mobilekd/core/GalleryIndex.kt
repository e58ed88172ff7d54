package com.mobilekd.core

import java.io.InputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.sqrt

/**
 * A prebuilt gallery shipped beside the model (`gallery/` of the android folder written by Python's
 * `export.android.write_android_folder`, format `mobilekd-gallery/1`, documented there and in docs/export.md):
 * gallery.json (ids, thumbnails, the model's sha256, embed_dim, count, precision) plus the embeddings as int8 with
 * one float32 scale per row (embeddings.i8 + scales.f32) or as IEEE fp16 (embeddings.f16), little endian.
 *
 * [load] validates everything against the model's contract (same model sha256, same dimension, exact counts and
 * byte sizes), dequantises and L2-normalises the rows (in double, as Python does) and puts them in a
 * [CosineIndex] tagged with the model's sha256, which [search] queries.
 */
class GalleryIndex private constructor(
    val precision: String,
    val modelSha256: String,
    val ids: List<String>,
    /** Paths relative to gallery/, one per row (JPEG thumbnails). */
    val thumbnails: List<String>,
    val thumbnailSize: Int,
    val index: CosineIndex,
) {
    val size: Int get() = ids.size
    val dim: Int get() = index.dim

    /** The dequantised unit vector of row [position]. */
    fun vector(position: Int): FloatArray = index.vector(position)

    /** Exact cosine top-k (ties by row order); [Hit.id] is the image id, [Hit.position] its row. */
    fun search(query: FloatArray, k: Int): List<Hit> = index.search(query, k)

    companion object {
        const val FORMAT = "mobilekd-gallery/1"
        val FIELDS = listOf("format", "model_file", "model_sha256", "embed_dim", "count", "precision", "embeddings",
            "scales", "ids", "thumbnails", "thumbnail_size")
        val PRECISIONS = listOf("int8", "fp16")

        /**
         * Reads the gallery whose files [open] returns by their path relative to gallery/ (e.g.
         * `{ assets.open("gallery/$it") }` or `{ File(dir, it).inputStream() }`), checked against [contract]:
         * the model.json shipped with it, whose model_sha256 must be the gallery's.
         */
        fun load(open: (String) -> InputStream, contract: ModelContract): GalleryIndex {
            val meta = readMeta(open)
            val g = Meta(meta)
            if (g.format != FORMAT) throw GalleryException("gallery.json format is \"${g.format}\", expected \"$FORMAT\"")
            if (g.precision !in PRECISIONS) throw GalleryException("gallery.json precision \"${g.precision}\" is not one of ${PRECISIONS.joinToString()}")
            val expected = contract.modelSha256
                ?: throw GalleryException("model.json records no model_sha256: cannot check that the gallery was made by this model")
            if (g.modelFile != contract.modelFile) throw GalleryException("the gallery was made with ${g.modelFile}, the model is ${contract.modelFile}")
            if (!g.modelSha256.equals(expected, ignoreCase = true))
                throw GalleryException("the gallery was made by another model (sha256 ${g.modelSha256.take(12)}..., model.json says ${expected.take(12)}...): ship them together")
            if (g.dim != contract.embedDim) throw GalleryException("the gallery holds ${g.dim}-d embeddings, the model makes ${contract.embedDim}-d ones")
            val values = readExact(open, g.embeddings, g.count.toLong() * g.dim * (if (g.precision == "int8") 1 else 2),
                "${g.count} x ${g.dim} ${g.precision} values")
            val rows = if (g.precision == "int8") {
                val scalesFile = g.scales ?: throw GalleryException("gallery.json scales is null for int8 embeddings")
                val scales = floats(readExact(open, scalesFile, g.count * 4L, "${g.count} float32 scales"))
                for ((i, s) in scales.withIndex())
                    if (!(s > 0f) || s.isInfinite()) throw GalleryException("$scalesFile: scale of row $i is $s (must be positive and finite)")
                dequantizeInt8(values, scales, g.dim)
            } else {
                if (g.scales != null) throw GalleryException("gallery.json scales must be null for fp16 embeddings")
                halves(values)
            }
            val index = CosineIndex(g.dim, expected)
            for (i in 0 until g.count) {
                val row = normalizeRow(rows, i, g.dim) ?: throw GalleryException("${g.embeddings}: row $i (${g.ids[i]}) is all zero or not finite")
                index.add(g.ids[i], row)
            }
            return GalleryIndex(g.precision, g.modelSha256, g.ids, g.thumbnails, g.thumbnailSize, index)
        }

        private fun readMeta(open: (String) -> InputStream): Fields {
            val text = try {
                open("gallery.json").use { it.readBytes().toString(Charsets.UTF_8) }
            } catch (e: java.io.IOException) {
                throw GalleryException("gallery/gallery.json cannot be read: ${e.message}", e)
            }
            val parsed = try { Json.parse(text) } catch (e: ContractException) { throw GalleryException("gallery.json: ${e.message}") }
            @Suppress("UNCHECKED_CAST")
            val map = parsed as? Map<String, Any?> ?: throw GalleryException("gallery.json is not a JSON object")
            val f = Fields(map, "gallery.json")
            try { f.requireKeys(FIELDS, emptyList()) } catch (e: ContractException) { throw GalleryException(e.message!!) }
            return f
        }

        private fun readExact(open: (String) -> InputStream, name: String, expected: Long, what: String): ByteArray {
            val bytes = try { open(name).use { it.readBytes() } } catch (e: java.io.IOException) {
                throw GalleryException("gallery/$name cannot be read: ${e.message}", e)
            }
            if (bytes.size.toLong() != expected) throw GalleryException("gallery/$name holds ${bytes.size} bytes, expected $expected ($what)")
            return bytes
        }

        private fun floats(bytes: ByteArray): FloatArray {
            val b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            return FloatArray(bytes.size / 4) { b.getFloat() }
        }

        private fun dequantizeInt8(q: ByteArray, scales: FloatArray, dim: Int): DoubleArray =
            DoubleArray(q.size) { scales[it / dim].toDouble() * q[it] }

        private fun halves(bytes: ByteArray): DoubleArray {
            val b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            return DoubleArray(bytes.size / 2) { halfToFloat(b.getShort().toInt() and 0xFFFF).toDouble() }
        }

        /** Row [i] / its L2 norm, computed in double like Python's reader; null when the norm is 0 or not finite. */
        private fun normalizeRow(rows: DoubleArray, i: Int, dim: Int): FloatArray? {
            var s = 0.0
            for (j in 0 until dim) s += rows[i * dim + j] * rows[i * dim + j]
            val n = sqrt(s)
            if (!(n > 0.0) || n.isInfinite()) return null
            return FloatArray(dim) { (rows[i * dim + it] / n).toFloat() }
        }

        /** IEEE 754 binary16 bits -> float (exact; java.lang.Float.float16ToFloat needs Java 20 / Android 15). */
        fun halfToFloat(h: Int): Float {
            val exp = (h ushr 10) and 0x1F
            val mant = h and 0x3FF
            val v = when (exp) {
                0 -> Math.scalb(mant.toFloat(), -24)
                0x1F -> if (mant == 0) Float.POSITIVE_INFINITY else Float.NaN
                else -> Float.fromBits(((exp - 15 + 127) shl 23) or (mant shl 13))
            }
            return if (h and 0x8000 != 0) -v else v
        }
    }

    /** The typed fields of gallery.json, each checked with the offending field named. */
    private class Meta(f: Fields) {
        val format = str(f, "format")
        val modelFile = str(f, "model_file")
        val modelSha256 = str(f, "model_sha256")
        val dim = positive(f, "embed_dim")
        val count = positive(f, "count")
        val precision = str(f, "precision")
        val embeddings = file(f, "embeddings")!!
        val scales = file(f, "scales", nullable = true)
        val ids = strings(f, "ids", count)
        val thumbnails = strings(f, "thumbnails", count).onEach { safePath(it, "thumbnails") }
        val thumbnailSize = positive(f, "thumbnail_size")

        companion object {
            fun str(f: Fields, key: String): String =
                f.map[key] as? String ?: throw GalleryException("gallery.json field '$key' must be a string")

            fun positive(f: Fields, key: String): Int {
                val v = f.map[key] as? Long ?: throw GalleryException("gallery.json field '$key' must be an integer")
                if (v < 1 || v > Int.MAX_VALUE) throw GalleryException("gallery.json field '$key' must be positive, got $v")
                return v.toInt()
            }

            fun file(f: Fields, key: String, nullable: Boolean = false): String? {
                val v = f.map[key]
                if (v == null && nullable) return null
                return safePath(v as? String ?: throw GalleryException("gallery.json field '$key' must be a file name"), key)
            }

            fun safePath(p: String, key: String): String {
                if (p.isEmpty() || p.startsWith("/") || p.split('/', '\\').any { it == ".." })
                    throw GalleryException("gallery.json field '$key': \"$p\" is not a path inside gallery/")
                return p
            }

            fun strings(f: Fields, key: String, count: Int): List<String> {
                val list = f.map[key] as? List<*> ?: throw GalleryException("gallery.json field '$key' must be a list")
                if (list.size != count) throw GalleryException("gallery.json field '$key' has ${list.size} entries, count is $count")
                return list.mapIndexed { i, v -> v as? String ?: throw GalleryException("gallery.json field '$key'[$i] must be a string") }
            }
        }
    }
}

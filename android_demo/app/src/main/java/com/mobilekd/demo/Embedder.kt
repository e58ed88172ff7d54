package com.mobilekd.demo

import android.graphics.Bitmap
import com.mobilekd.core.ContractException
import com.mobilekd.core.Embeddings
import com.mobilekd.core.ModelContract
import com.mobilekd.core.Preprocessor
import com.mobilekd.core.Quantization
import com.mobilekd.core.RgbImage
import com.mobilekd.core.TensorInfo
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.Closeable
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/** One embedding with its timings (milliseconds). */
class Embedding(val vector: FloatArray, val preprocessMs: Double, val inferenceMs: Double)

/**
 * The exported student run through LiteRT's Interpreter: XNNPACK on the CPU by default, the GPU delegate when
 * asked (and supported). Throws [com.mobilekd.core.MobileKdException] subclasses with user-readable messages when
 * model.json is invalid or disagrees with the .tflite file (input shape/dtype/quantisation, embedding dim).
 */
class Embedder(modelBytes: ByteArray, contractJson: String, useGpu: Boolean, threads: Int = 4) : Closeable {
    val contract: ModelContract = ModelContract.parse(contractJson)
    val accelerator: String
    private val interpreter: Interpreter
    private val gpu: GpuDelegate?
    private val preprocessor = Preprocessor(contract)
    private val input: ByteBuffer
    private val output: ByteBuffer

    init {
        if (contract.runtime != "tflite")
            throw ContractException("model.json describes a ${contract.runtime} model (${contract.modelFile}); this app runs tflite")
        contract.checkModelSha256(sha256(modelBytes))
        val options = Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true)
        gpu = if (useGpu) {
            val compat = CompatibilityList()
            if (!compat.isDelegateSupportedOnThisDevice)
                throw ContractException("the GPU delegate is not supported on this device: switch GPU off")
            GpuDelegate(compat.bestOptionsForThisDevice).also { options.addDelegate(it) }
        } else null
        accelerator = if (useGpu) "GPU delegate" else "CPU (XNNPACK, $threads threads)"
        val model = ByteBuffer.allocateDirect(modelBytes.size).order(ByteOrder.nativeOrder())
        model.put(modelBytes).rewind()
        interpreter = Interpreter(model, options)
        try {
            contract.checkModel(info(interpreter.getInputTensor(0)), info(interpreter.getOutputTensor(0)))
        } catch (e: Exception) {
            close()
            throw e
        }
        input = ByteBuffer.allocateDirect(preprocessor.inputBytes).order(ByteOrder.nativeOrder())
        output = ByteBuffer.allocateDirect(interpreter.getOutputTensor(0).numBytes()).order(ByteOrder.nativeOrder())
    }

    fun embed(bitmap: Bitmap): Embedding {
        val t0 = System.nanoTime()
        val image = BitmapImages.toRgbImage(bitmap)
        preprocessor.write(image, input)
        val t1 = System.nanoTime()
        output.rewind()
        interpreter.run(input, output)
        val t2 = System.nanoTime()
        output.rewind()
        val vector = when (contract.output.dtype) {
            "float32" -> FloatArray(contract.embedDim).also { output.asFloatBuffer().get(it) }
                .let { Embeddings.fromOutput(contract, it, null) }
            else -> ByteArray(contract.embedDim).also { output.get(it) }.let { Embeddings.fromOutput(contract, null, it) }
        }
        return Embedding(vector, (t1 - t0) / 1e6, (t2 - t1) / 1e6)
    }

    override fun close() {
        interpreter.close()
        gpu?.close()
    }

    companion object {
        fun dtypeName(t: DataType): String = when (t) {
            DataType.FLOAT32 -> "float32"
            DataType.UINT8 -> "uint8"
            DataType.INT8 -> "int8"
            else -> t.name.lowercase()
        }

        fun info(t: Tensor): TensorInfo {
            val q = t.quantizationParams()
            val quant = if (q.scale != 0f) Quantization(q.scale.toDouble(), q.zeroPoint) else null
            return TensorInfo(t.shape().toList(), dtypeName(t.dataType()), quant)
        }

        fun sha256(bytes: ByteArray): String =
            MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
    }
}

/** Android's side of core's image boundary: decoded Bitmaps -> [RgbImage] (ARGB ints, alpha ignored). */
object BitmapImages {
    fun toRgbImage(bitmap: Bitmap): RgbImage {
        val b = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val pixels = IntArray(b.width * b.height)
        b.getPixels(pixels, 0, b.width, 0, 0, b.width, b.height)
        return RgbImage(b.width, b.height, pixels)
    }
}

package com.mobilekd.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.math.floor
import kotlin.math.sqrt

/**
 * Turns an image into the model input the contract describes, exactly as Python's
 * `mobilekd.data.views.render_evaluation(image, preprocess)` (the evaluation view) does: the central square of side
 * `crop * min(W, H)`, a Pillow-exact bilinear resize to `size x size`, `x = (pixel - mean) / std` in float32,
 * then the contract's layout (NHWC / NCHW) and, for int8 / uint8 inputs, its quantisation.
 */
class Preprocessor(private val contract: ModelContract) {
    private val pre = contract.preprocess
    private val size = pre.size
    private val layout = contract.input.layout ?: "NHWC"

    /** The crop box in pixels, computed with the same float operations as `evaluation_view` + `render`. */
    fun cropBox(width: Int, height: Int): FloatArray {
        val side = pre.crop * minOf(width, height)
        val left = (width - side) / 2
        val top = (height - side) / 2
        val l = left / width; val t = top / height; val r = (left + side) / width; val b = (top + side) / height
        return floatArrayOf((l * width).toFloat(), (t * height).toFloat(), (r * width).toFloat(), (b * height).toFloat())
    }

    /** The resized uint8 RGB pixels (HWC), before normalisation. */
    fun resized(image: RgbImage): ByteArray = PillowResize.resize(image, size, size, cropBox(image.width, image.height))

    /** Normalised float32 values in the contract's layout. */
    fun toFloat(image: RgbImage): FloatArray {
        val rgb = resized(image)
        val mean = FloatArray(3) { pre.mean[it].toFloat() }
        val std = FloatArray(3) { pre.std[it].toFloat() }
        val hw = size * size
        val out = FloatArray(hw * 3)
        for (p in 0 until hw) for (c in 0 until 3) {
            val v = ((rgb[p * 3 + c].toInt() and 0xFF).toFloat() - mean[c]) / std[c]
            out[if (layout == "NCHW") c * hw + p else p * 3 + c] = v
        }
        return out
    }

    /** int8 / uint8 inputs: the quantised values (as Ints, -128..127 or 0..255). */
    fun toQuantized(image: RgbImage): IntArray {
        val q = contract.input.quantization ?: throw ContractException("input dtype ${contract.input.dtype} has no quantization")
        return Quantize.quantize(toFloat(image), q, contract.input.dtype)
    }

    /** Writes the model input into [buffer] (native byte order for float32), ready for the interpreter. */
    fun write(image: RgbImage, buffer: ByteBuffer) {
        buffer.order(ByteOrder.nativeOrder())
        buffer.rewind()
        when (contract.input.dtype) {
            "float32" -> toFloat(image).forEach { buffer.putFloat(it) }
            "int8", "uint8" -> toQuantized(image).forEach { buffer.put(it.toByte()) }
            else -> throw ContractException("input dtype ${contract.input.dtype} is not supported by the app")
        }
        buffer.rewind()
    }

    /** Bytes one input occupies. */
    val inputBytes: Int get() = size * size * 3 * (if (contract.input.dtype == "float32") 4 else 1)
}

object Quantize {
    private fun range(dtype: String) = when (dtype) {
        "int8" -> -128 to 127
        "uint8" -> 0 to 255
        else -> throw ContractException("cannot quantise to $dtype")
    }

    /** q = clamp(round(x / scale) + zero_point), rounding half away from zero as TFLite does. */
    fun quantize(x: FloatArray, q: Quantization, dtype: String): IntArray {
        val (lo, hi) = range(dtype)
        return IntArray(x.size) {
            val v = x[it].toDouble() / q.scale
            val r = if (v >= 0) floor(v + 0.5) else -floor(-v + 0.5)
            (r.toLong() + q.zeroPoint).coerceIn(lo.toLong(), hi.toLong()).toInt()
        }
    }

    /** real = scale * (q - zero_point); [raw] holds the tensor's bytes (int8 signed or uint8 unsigned). */
    fun dequantize(raw: ByteArray, q: Quantization, dtype: String): FloatArray {
        range(dtype)
        return FloatArray(raw.size) {
            val v = if (dtype == "uint8") raw[it].toInt() and 0xFF else raw[it].toInt()
            (q.scale * (v - q.zeroPoint)).toFloat()
        }
    }
}

object Embeddings {
    /** x / ||x||; an all-zero or non-finite vector is an error (it cannot be compared by cosine). */
    fun l2Normalize(x: FloatArray): FloatArray {
        var s = 0.0
        for (v in x) s += v.toDouble() * v
        val n = sqrt(s)
        if (!(n > 0.0) || n.isInfinite()) throw IndexException("cannot L2-normalise a vector with norm $n")
        return FloatArray(x.size) { (x[it] / n).toFloat() }
    }

    /** The model's raw output (float32 values or the int8/uint8 bytes) -> a unit-length embedding. */
    fun fromOutput(contract: ModelContract, floats: FloatArray?, bytes: ByteArray?): FloatArray {
        val out = contract.output
        val v = when (out.dtype) {
            "float32" -> floats ?: throw IndexException("float32 output expected")
            "int8", "uint8" -> Quantize.dequantize(bytes ?: throw IndexException("${out.dtype} output expected"), out.quantization!!, out.dtype)
            else -> throw ContractException("output dtype ${out.dtype} is not supported by the app")
        }
        if (v.size != contract.embedDim) throw ModelMismatchException(listOf("the model produced ${v.size} values, model.json says embed_dim ${contract.embedDim}"))
        if (!contract.needsL2Normalize) {
            var s = 0.0; for (e in v) s += e.toDouble() * e
            if (abs(sqrt(s) - 1.0) < 1e-3) return v
        }
        return l2Normalize(v)
    }
}

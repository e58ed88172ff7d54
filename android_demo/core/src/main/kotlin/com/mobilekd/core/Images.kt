package com.mobilekd.core

/**
 * Decoded pixels, row-major, one packed `0xAARRGGBB` Int per pixel (Android's `Bitmap.getPixels` layout).
 * Alpha is ignored, as Pillow's `convert("RGB")` ignores it (no compositing onto a background).
 */
class RgbImage(val width: Int, val height: Int, val pixels: IntArray) {
    init {
        require(width > 0 && height > 0) { "image size must be positive, got ${width}x$height" }
        require(pixels.size == width * height) { "expected ${width * height} pixels, got ${pixels.size}" }
    }
}

/**
 * The image-decoding boundary: the app implements it with Android's decoders (Bitmap pixels), the JVM tests
 * with javax.imageio. Implementations throw [ImageDecodeException] for data they cannot decode.
 */
fun interface ImageDecoder {
    fun decode(bytes: ByteArray): RgbImage
}

/**
 * Pillow's `Image.resize(size, Image.BILINEAR, box=...)` for 8-bit RGB, reproduced operation by operation
 * from Pillow's `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
 * `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`, `ImagingResampleInner`): a separable triangle filter whose
 * support grows with the down-scaling ratio (so it antialiases), coefficients rounded to 22-bit fixed point,
 * a horizontal pass rounded to uint8, then a vertical pass. The output is bit-identical to Pillow's.
 */
object PillowResize {
    private const val PRECISION_BITS = 32 - 8 - 2

    private class Coeffs(val ksize: Int, val bounds: IntArray, val kk: IntArray)

    private fun bilinear(x0: Double): Double {
        val x = if (x0 < 0.0) -x0 else x0
        return if (x < 1.0) 1.0 - x else 0.0
    }

    private fun precompute(inSize: Int, in0: Float, in1: Float, outSize: Int): Coeffs {
        val scale = (in1 - in0).toDouble() / outSize  // (double)(in1 - in0) / outSize, the difference in float
        val filterscale = if (scale < 1.0) 1.0 else scale
        val support = 1.0 * filterscale
        val ksize = Math.ceil(support).toInt() * 2 + 1
        val bounds = IntArray(outSize * 2)
        val pre = DoubleArray(outSize * ksize)
        for (xx in 0 until outSize) {
            val center = in0.toDouble() + (xx + 0.5) * scale
            var ww = 0.0
            val ss = 1.0 / filterscale
            var xmin = (center - support + 0.5).toInt()
            if (xmin < 0) xmin = 0
            var xmax = (center + support + 0.5).toInt()
            if (xmax > inSize) xmax = inSize
            xmax -= xmin
            val base = xx * ksize
            for (x in 0 until xmax) {
                val w = bilinear(((x + xmin).toDouble() - center + 0.5) * ss)
                pre[base + x] = w
                ww += w
            }
            for (x in 0 until xmax) if (ww != 0.0) pre[base + x] /= ww
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        val one = (1 shl PRECISION_BITS).toDouble()
        val kk = IntArray(pre.size) { i ->
            val v = pre[i]
            if (v < 0) (-0.5 + v * one).toInt() else (0.5 + v * one).toInt()
        }
        return Coeffs(ksize, bounds, kk)
    }

    private fun clip8(v: Int): Int {
        val s = v shr PRECISION_BITS
        return if (s < 0) 0 else if (s > 255) 255 else s
    }

    /**
     * Resizes the region [box] (left, top, right, bottom in pixels, float32 as Pillow stores it) of [src] to
     * [outW] x [outH]; returns interleaved RGB bytes (HWC, unsigned values in signed bytes).
     */
    fun resize(src: RgbImage, outW: Int, outH: Int, box: FloatArray): ByteArray {
        require(box.size == 4)
        val needH = outW != src.width || box[0] != 0f || box[2] != outW.toFloat()
        val needV = outH != src.height || box[1] != 0f || box[3] != outH.toFloat()
        val vert = precompute(src.height, box[1], box[3], outH)
        val yFirst = vert.bounds[0]
        val yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1]

        // working image: 3 ints per pixel
        var w = src.width
        var h = src.height
        var img = IntArray(w * h * 3)
        for (i in 0 until w * h) {
            val p = src.pixels[i]
            img[i * 3] = (p shr 16) and 0xFF
            img[i * 3 + 1] = (p shr 8) and 0xFF
            img[i * 3 + 2] = p and 0xFF
        }
        val half = 1 shl (PRECISION_BITS - 1)
        if (needH) {
            val hor = precompute(src.width, box[0], box[2], outW)
            for (i in 0 until outH) vert.bounds[i * 2] -= yFirst
            val th = yLast - yFirst
            val tmp = IntArray(outW * th * 3)
            for (yy in 0 until th) {
                val row = (yy + yFirst) * w * 3
                for (xx in 0 until outW) {
                    val xmin = hor.bounds[xx * 2]
                    val xmax = hor.bounds[xx * 2 + 1]
                    val kb = xx * hor.ksize
                    var s0 = half; var s1 = half; var s2 = half
                    for (x in 0 until xmax) {
                        val k = hor.kk[kb + x]
                        val o = row + (x + xmin) * 3
                        s0 += img[o] * k; s1 += img[o + 1] * k; s2 += img[o + 2] * k
                    }
                    val t = (yy * outW + xx) * 3
                    tmp[t] = clip8(s0); tmp[t + 1] = clip8(s1); tmp[t + 2] = clip8(s2)
                }
            }
            img = tmp; w = outW; h = th
        }
        if (needV) {
            val out = IntArray(w * outH * 3)
            for (yy in 0 until outH) {
                val ymin = vert.bounds[yy * 2]
                val ymax = vert.bounds[yy * 2 + 1]
                val kb = yy * vert.ksize
                for (xx in 0 until w) {
                    var s0 = half; var s1 = half; var s2 = half
                    for (y in 0 until ymax) {
                        val k = vert.kk[kb + y]
                        val o = ((y + ymin) * w + xx) * 3
                        s0 += img[o] * k; s1 += img[o + 1] * k; s2 += img[o + 2] * k
                    }
                    val t = (yy * w + xx) * 3
                    out[t] = clip8(s0); out[t + 1] = clip8(s1); out[t + 2] = clip8(s2)
                }
            }
            img = out; h = outH
        }
        check(w == outW && h == outH) { "resize produced ${w}x$h, expected ${outW}x$outH" }
        return ByteArray(img.size) { img[it].toByte() }
    }
}

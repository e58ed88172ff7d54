package com.mobilekd.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class PreprocessTest {
    private fun contract(layout: String = "NHWC", dtype: String = "float32", size: Int = 32, crop: Double = 1.0): ModelContract {
        val m = ContractTest.validMap()
        val input = ContractTest.sub(m, "input")
        input["layout"] = layout
        input["dtype"] = dtype
        input["shape"] = if (layout == "NHWC") listOf(1, size, size, 3) else listOf(1, 3, size, size)
        if (dtype == "float32") input["quantization"] = null
        ContractTest.sub(m, "preprocess")["size"] = size
        ContractTest.sub(m, "preprocess")["crop"] = crop
        return ContractTest.parse(m)
    }

    private fun image(w: Int, h: Int, f: (Int, Int) -> Int) = RgbImage(w, h, IntArray(w * h) { f(it % w, it / w) })

    @Test fun constantImageGivesNormalisedConstant() {
        val c = contract()
        val out = Preprocessor(c).toFloat(image(301, 77) { _, _ -> 0xFF102030.toInt() })
        val expect = floatArrayOf((16f - 123.675f) / 58.395f, (32f - 116.28f) / 57.12f, (48f - 103.53f) / 57.375f)
        for (i in out.indices) assertEquals(expect[i % 3], out[i], 0f)
    }

    @Test fun sameSizeIsIdentity() {
        val img = image(32, 32) { x, y -> (x * 7 shl 16) or (y * 5 shl 8) or ((x + y) and 0xFF) }
        val px = Preprocessor(contract()).resized(img)
        for (i in 0 until 32 * 32) {
            val p = img.pixels[i]
            assertEquals((p shr 16) and 0xFF, px[i * 3].toInt() and 0xFF)
            assertEquals((p shr 8) and 0xFF, px[i * 3 + 1].toInt() and 0xFF)
            assertEquals(p and 0xFF, px[i * 3 + 2].toInt() and 0xFF)
        }
    }

    @Test fun layoutsAreTransposesOfEachOther() {
        val img = image(90, 50) { x, y -> (x shl 16) or (y shl 8) or (x * y and 0xFF) }
        val hwc = Preprocessor(contract("NHWC")).toFloat(img)
        val chw = Preprocessor(contract("NCHW")).toFloat(img)
        val hw = 32 * 32
        for (p in 0 until hw) for (ch in 0 until 3) assertEquals(hwc[p * 3 + ch], chw[ch * hw + p], 0f)
    }

    @Test fun cropBoxIsCentralSquare() {
        val c = contract(crop = 0.5)
        assertArrayEquals(floatArrayOf(75f, 25f, 125f, 75f), Preprocessor(c).cropBox(200, 100), 0f)
    }

    @Test fun quantizeRoundTrip() {
        val q = Quantization(0.05, 3)
        val x = floatArrayOf(-10f, -1.01f, 0f, 0.024f, 0.026f, 1f, 10f)
        val qi = Quantize.quantize(x, q, "int8")
        assertArrayEquals(intArrayOf(-128, -17, 3, 3, 4, 23, 127), qi)
        val back = Quantize.dequantize(ByteArray(qi.size) { qi[it].toByte() }, q, "int8")
        for (i in 1..5) assertTrue(Math.abs(back[i] - x[i]) <= 0.025f + 1e-6f)
        val u = Quantize.dequantize(byteArrayOf(0xFF.toByte(), 0), Quantization(1.0, 0), "uint8")
        assertArrayEquals(floatArrayOf(255f, 0f), u, 0f)
    }

    @Test fun quantizedInputBuffer() {
        val c = contract(dtype = "int8")
        val img = image(40, 40) { _, _ -> 0xFF7B7468.toInt() }
        val p = Preprocessor(c)
        val buf = java.nio.ByteBuffer.allocateDirect(p.inputBytes)
        p.write(img, buf)
        val expect = Quantize.quantize(p.toFloat(img), c.input.quantization!!, "int8")
        for (i in expect.indices) assertEquals(expect[i].toByte(), buf.get(i))
    }

    @Test fun l2Normalize() {
        assertArrayEquals(floatArrayOf(0.6f, 0.8f), Embeddings.l2Normalize(floatArrayOf(3f, 4f)), 1e-7f)
        try { Embeddings.l2Normalize(floatArrayOf(0f, 0f)); fail() } catch (e: IndexException) {
            assertTrue(e.message!!.contains("norm"))
        }
    }

    @Test fun outputOfWrongSizeIsAMismatch() {
        try { Embeddings.fromOutput(contract(), FloatArray(8) { 1f }, null); fail() } catch (e: ModelMismatchException) {
            assertTrue(e.message!!.contains("embed_dim 16"))
        }
    }

    @Test fun undecodableImage() {
        for (bytes in listOf(ByteArray(0), "not an image".toByteArray(), byteArrayOf(0x89.toByte(), 0x50, 0x4E, 0x47, 1, 2, 3))) {
            try { ImageIoDecoder.decode(bytes); fail("decoded garbage") } catch (e: ImageDecodeException) {
                assertTrue(e.message!!.startsWith("cannot decode image"))
            }
        }
    }
}

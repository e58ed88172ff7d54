package com.mobilekd.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.ByteArrayInputStream
import java.io.FileNotFoundException
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** GalleryIndex on small in-memory galleries: reading both precisions, search, and every validation error. */
class GalleryTest {
    private val sha = "ab".repeat(32)
    private val dim = 16  // ContractTest.validMap()'s embed_dim

    private fun contract(modelSha: String? = sha): ModelContract {
        val m = ContractTest.validMap()
        if (modelSha != null) m["model_sha256"] = modelSha
        return ContractTest.parse(m)
    }

    /** Row i points mostly along axis i (so row i is query i's nearest), with a small shared component. */
    private fun rows(n: Int) = (0 until n).map { i -> FloatArray(dim) { j -> if (j == i) 1f else 0.1f * (j + 1) / dim } }

    private fun meta(n: Int, precision: String) = linkedMapOf<String, Any?>(
        "format" to "mobilekd-gallery/1", "model_file" to "model.tflite", "model_sha256" to sha, "embed_dim" to dim,
        "count" to n, "precision" to precision, "embeddings" to if (precision == "int8") "embeddings.i8" else "embeddings.f16",
        "scales" to if (precision == "int8") "scales.f32" else null, "ids" to (0 until n).map { "img$it.jpg" },
        "thumbnails" to (0 until n).map { "thumbs/%06d.jpg".format(it) }, "thumbnail_size" to 96)

    /** The files Python's write_gallery makes, built here the same way (int8: per-row scale max|v|/127). */
    private fun files(n: Int, precision: String, edit: (MutableMap<String, Any?>) -> Unit = {}): MutableMap<String, ByteArray> {
        val vs = rows(n)
        val out = linkedMapOf<String, ByteArray>()
        if (precision == "int8") {
            val q = ByteArray(n * dim)
            val scales = ByteBuffer.allocate(4 * n).order(ByteOrder.LITTLE_ENDIAN)
            for ((i, v) in vs.withIndex()) {
                val s = v.maxOf { kotlin.math.abs(it) } / 127f
                scales.putFloat(s)
                for (j in 0 until dim) q[i * dim + j] = Math.round(v[j] / s).coerceIn(-127, 127).toByte()
            }
            out["embeddings.i8"] = q; out["scales.f32"] = scales.array()
        } else {
            val b = ByteBuffer.allocate(2 * n * dim).order(ByteOrder.LITTLE_ENDIAN)
            for (v in vs) for (x in v) b.putShort(floatToHalf(x))
            out["embeddings.f16"] = b.array()
        }
        val m = meta(n, precision); edit(m)
        out["gallery.json"] = Json.write(m).toByteArray()
        return out
    }

    /** float -> binary16 by rounding to nearest (test helper; exact for the values used here up to rounding). */
    private fun floatToHalf(f: Float): Short {
        if (f == 0f) return 0
        val bits = f.toRawBits()
        val sign = (bits ushr 16) and 0x8000
        val exp = ((bits ushr 23) and 0xFF) - 127 + 15
        require(exp in 1..30) { "test values stay in the normal half range" }
        val mant = bits and 0x7FFFFF
        var h = sign or (exp shl 10) or (mant ushr 13)
        if ((mant and 0x1FFF) > 0x1000 || ((mant and 0x1FFF) == 0x1000 && (h and 1) == 1)) h++
        return h.toShort()
    }

    private fun load(files: Map<String, ByteArray>, c: ModelContract = contract()) =
        GalleryIndex.load({ name -> ByteArrayInputStream(files[name] ?: throw FileNotFoundException(name)) }, c)

    private fun expectError(fragment: String, files: Map<String, ByteArray>, c: ModelContract = contract()) {
        try { load(files, c); fail("expected GalleryException containing \"$fragment\"") } catch (e: GalleryException) {
            assertTrue("message \"${e.message}\" should contain \"$fragment\"", e.message!!.contains(fragment))
        }
    }

    @Test fun readsAndSearchesBothPrecisions() {
        for (precision in listOf("int8", "fp16")) {
            val g = load(files(5, precision))
            assertEquals(precision, g.precision)
            assertEquals(5, g.size); assertEquals(dim, g.dim)
            assertEquals("thumbs/000003.jpg", g.thumbnails[3])
            for ((i, v) in rows(5).withIndex()) {
                val hits = g.search(v, 3)
                assertEquals("$precision query $i", "img$i.jpg", hits[0].id)
                assertEquals(i, hits[0].position)
                assertEquals(1.0, hits[0].score.toDouble(), 2e-3)  // quantisation error only
                val unit = Embeddings.l2Normalize(v)
                val back = g.vector(i)
                for (j in 0 until dim) assertEquals(unit[j], back[j], if (precision == "int8") 5e-3f else 1e-3f)
            }
            assertEquals(sha, g.index.tag)
        }
    }

    @Test fun halfFloatDecoding() {
        assertEquals(1f, GalleryIndex.halfToFloat(0x3C00), 0f)
        assertEquals(-2f, GalleryIndex.halfToFloat(0xC000), 0f)
        assertEquals(65504f, GalleryIndex.halfToFloat(0x7BFF), 0f)
        assertEquals(Math.scalb(1f, -24), GalleryIndex.halfToFloat(0x0001), 0f)  // smallest subnormal
        assertEquals(Float.POSITIVE_INFINITY, GalleryIndex.halfToFloat(0x7C00), 0f)
        assertTrue(GalleryIndex.halfToFloat(0x7E00).isNaN())
        assertArrayEquals(floatArrayOf(0.333251953125f), floatArrayOf(GalleryIndex.halfToFloat(0x3555)), 0f)
    }

    @Test fun anotherModelOrDimensionIsRefused() {
        expectError("another model", files(3, "int8"), contract("cd".repeat(32)))
        expectError("records no model_sha256", files(3, "int8"), contract(null))
        expectError("holds 8-d embeddings", files(3, "int8") { it["embed_dim"] = 8 })
        expectError("made with other.tflite", files(3, "fp16") { it["model_file"] = "other.tflite" })
    }

    @Test fun malformedMetadataIsRefused() {
        expectError("missing field(s): scales", files(3, "int8") { it.remove("scales") })
        expectError("unknown field(s): extra", files(3, "int8") { it["extra"] = 1 })
        expectError("format is \"mobilekd-gallery/9\"", files(3, "int8") { it["format"] = "mobilekd-gallery/9" })
        expectError("precision \"int4\"", files(3, "int8") { it["precision"] = "int4" })
        expectError("'count' must be positive", files(3, "int8") { it["count"] = 0 })
        expectError("'ids' has 2 entries, count is 3", files(3, "int8") { it["ids"] = listOf("a", "b") })
        expectError("'thumbnails'[1] must be a string", files(3, "int8") { it["thumbnails"] = listOf("a", 2, "c") })
        expectError("not a path inside gallery/", files(3, "int8") { it["embeddings"] = "../model.tflite" })
        expectError("scales must be null for fp16", files(3, "fp16") { it["scales"] = "scales.f32" })
        expectError("gallery.json: invalid JSON", files(3, "int8").also { it["gallery.json"] = "{\"format\": ".toByteArray() })
        expectError("gallery.json is not a JSON object", files(3, "int8").also { it["gallery.json"] = "[1]".toByteArray() })
    }

    @Test fun wrongSizesAndValuesAreRefused() {
        expectError("embeddings.i8 holds 47 bytes, expected 48", files(3, "int8").also { it["embeddings.i8"] = it["embeddings.i8"]!!.copyOf(47) })
        expectError("scales.f32 holds 16 bytes, expected 12", files(3, "int8").also { it["scales.f32"] = it["scales.f32"]!!.copyOf(16) })
        expectError("embeddings.f16 holds 94 bytes, expected 96", files(3, "fp16").also { it["embeddings.f16"] = it["embeddings.f16"]!!.copyOf(94) })
        expectError("gallery/scales.f32 cannot be read", files(3, "int8").also { it.remove("scales.f32") })
        val zeroScale = files(3, "int8").also { ByteBuffer.wrap(it["scales.f32"]!!).order(ByteOrder.LITTLE_ENDIAN).putFloat(4, 0f) }
        expectError("scale of row 1 is 0.0", zeroScale)
        val zeroRow = files(3, "fp16").also { f -> val b = f["embeddings.f16"]!!; for (j in 0 until 2 * dim) b[2 * dim * 2 + j] = 0 }
        expectError("row 2 (img2.jpg) is all zero", zeroRow)
    }
}

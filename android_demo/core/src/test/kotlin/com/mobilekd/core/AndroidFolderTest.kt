package com.mobilekd.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import kotlin.math.abs

/**
 * android/ folders written by Python's `export.android.write_android_folder` (tests/android_demo/test_core.py ->
 * MOBILEKD_ANDROID=folder with a manifest.json), read as the app reads its assets: model.json parses and names
 * the model.tflite beside it (same sha256), the prebuilt gallery loads against it, its rows equal Python's
 * dequantised rows, its top-k equals Python's, the shipped photos preprocess bit-exact, and every thumbnail is
 * there. Skipped when MOBILEKD_ANDROID is unset.
 */
@Suppress("UNCHECKED_CAST")
class AndroidFolderTest {
    private val root: File? = System.getenv("MOBILEKD_ANDROID")?.let { File(it) }

    private fun floats(f: File): FloatArray {
        val b = ByteBuffer.wrap(f.readBytes()).order(ByteOrder.LITTLE_ENDIAN)
        return FloatArray(b.remaining() / 4) { b.getFloat() }
    }

    private fun sha256(f: File) = MessageDigest.getInstance("SHA-256").digest(f.readBytes()).joinToString("") { "%02x".format(it) }

    @Test fun pythonWrittenFoldersLoadAndSearchAlike() {
        assumeTrue("MOBILEKD_ANDROID is not set: android folder tests skipped", root != null)
        val manifest = Json.parse(File(root, "manifest.json").readText()) as Map<String, Any?>
        val folders = manifest["folders"] as List<Map<String, Any?>>
        var ties = 0
        for (entry in folders) {
            val dir = File(root, entry["dir"] as String)
            val label = entry["dir"] as String
            val contract = ModelContract.parse(File(dir, "model.json").readText())
            assertEquals(label, "model.tflite", contract.modelFile)
            assertEquals(label, contract.modelSha256, sha256(File(dir, contract.modelFile)))
            val gallery = File(dir, "gallery")
            val g = GalleryIndex.load({ File(gallery, it).inputStream() }, contract)
            assertEquals(label, entry["precision"], g.precision)
            assertEquals(label, entry["ids"], g.ids)
            for (t in g.thumbnails) assertTrue("$label: thumbnail $t", File(gallery, t).isFile)

            // the dequantised rows: Python's read_gallery vectors
            val dim = g.dim
            val expect = floats(File(root, entry["vectors"] as String))
            for (i in 0 until g.size)
                assertArrayEquals("$label row $i", expect.copyOfRange(i * dim, (i + 1) * dim), g.vector(i), 1e-6f)

            // top-k of raw queries: Python's search_gallery (ties, equal within float rounding, may swap)
            val queries = floats(File(root, entry["queries"] as String))
            val topk = entry["topk"] as List<List<Long>>
            val scores = entry["scores"] as List<List<Number>>
            val k = topk[0].size
            for (q in topk.indices) {
                val hits = g.search(queries.copyOfRange(q * dim, (q + 1) * dim), k)
                for (r in 0 until k) {
                    assertEquals("$label query $q rank $r score", scores[q][r].toDouble(), hits[r].score.toDouble(), 1e-5)
                    if (hits[r].position != topk[q][r].toInt()) {
                        val other = topk[q].indexOf(hits[r].position.toLong())
                        assertTrue("$label query $q rank $r: kotlin ${hits[r].position}, python ${topk[q][r]}",
                            other >= 0 && abs(scores[q][other].toDouble() - scores[q][r].toDouble()) <= 1e-6)
                        ties++
                    }
                }
            }

            // the shipped photos' model inputs, as the app computes them from this model.json
            val p = Preprocessor(contract)
            for (case in entry["inputs"] as List<Map<String, Any?>>) {
                val img = ImageIoDecoder.decode(File(root, case["image"] as String).readBytes())
                val want = floats(File(root, case["tensor"] as String))
                val got = p.toFloat(img)
                assertEquals("$label ${case["image"]}", want.size, got.size)
                val bad = want.indices.count { want[it].toRawBits() != got[it].toRawBits() }
                assertEquals("$label ${case["image"]}: values differing from Python", 0, bad)
            }
        }
        println("GOLDEN android: ${folders.size} folders (${folders.joinToString { it["precision"] as String }}) loaded, " +
            "top-k reproduced ($ties tie swaps)")
    }
}

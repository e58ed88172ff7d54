package com.mobilekd.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.ByteArrayInputStream
import java.io.ByteArrayOutputStream
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs

/**
 * Golden vectors written by Python (tests/android_demo/test_core.py -> MOBILEKD_GOLDEN=folder): images, their
 * model inputs as mobilekd renders them, embeddings and faiss top-k. Skipped when MOBILEKD_GOLDEN is unset.
 */
@Suppress("UNCHECKED_CAST")
class GoldenTest {
    private val dir: File? = System.getenv("MOBILEKD_GOLDEN")?.let { File(it) }

    private fun manifest(): Map<String, Any?> {
        assumeTrue("MOBILEKD_GOLDEN is not set: golden tests skipped", dir != null)
        val f = File(dir, "manifest.json")
        assertTrue("MOBILEKD_GOLDEN=$dir has no manifest.json", f.isFile)
        return Json.parse(f.readText()) as Map<String, Any?>
    }

    private fun floats(name: String): FloatArray {
        val b = ByteBuffer.wrap(File(dir, name).readBytes()).order(ByteOrder.LITTLE_ENDIAN)
        return FloatArray(b.remaining() / 4) { b.getFloat() }
    }

    private fun contract(m: Map<String, Any?>, name: String) =
        ModelContract.parse(File(dir, (m["contracts"] as Map<String, Any?>)[name] as String).readText())

    @Test fun preprocessingIsBitExact() {
        val m = manifest()
        val cases = m["cases"] as List<Map<String, Any?>>
        var offByOne = 0
        var quantized = 0
        for (case in cases) {
            val label = "${case["image"]} / contract ${case["contract"]}"
            val c = contract(m, case["contract"] as String)
            val img = ImageIoDecoder.decode(File(dir, case["image"] as String).readBytes())
            assertEquals(label, (case["width"] as Long).toInt(), img.width)
            assertEquals(label, (case["height"] as Long).toInt(), img.height)
            val p = Preprocessor(c)
            val expect = floats(case["tensor"] as String)
            val actual = p.toFloat(img)
            assertEquals(label, expect.size, actual.size)
            var bad = 0; var first = -1; var maxDiff = 0f
            for (i in expect.indices) if (expect[i].toRawBits() != actual[i].toRawBits()) {
                bad++; if (first < 0) first = i; maxDiff = maxOf(maxDiff, abs(expect[i] - actual[i]))
            }
            assertEquals("$label: $bad of ${expect.size} values differ (first at $first: python ${expect.getOrNull(first)}, kotlin ${actual.getOrNull(first)}, max |diff| $maxDiff)", 0, bad)
            val qFile = case["quantized"] as String?
            if (qFile != null) {
                val raw = File(dir, qFile).readBytes()
                val q = p.toQuantized(img)
                assertEquals(label, raw.size, q.size)
                for (i in raw.indices) {
                    val py = if (c.input.dtype == "uint8") raw[i].toInt() and 0xFF else raw[i].toInt()
                    val d = abs(py - q[i])
                    assertTrue("$label: quantised value $i differs by $d steps (python $py, kotlin ${q[i]})", d <= 1)
                    if (d == 1) offByOne++
                }
                quantized++
            }
        }
        println("GOLDEN preprocess: ${cases.size} cases bit-exact ($quantized quantised inputs within 1 step, $offByOne values off by one)")
    }

    private fun checkTopK(label: String, index: CosineIndex, queries: List<FloatArray>, k: Int,
                          topk: List<List<Any?>>, scores: List<List<Any?>>, tieTol: Double): Int {
        var ties = 0
        for ((qi, q) in queries.withIndex()) {
            val hits = index.search(q, k)
            val ids = topk[qi].map { (it as Long).toInt() }
            val sc = scores[qi].map { (it as Number).toDouble() }
            for (r in 0 until k) {
                assertEquals("$label query $qi rank $r score", sc[r], hits[r].score.toDouble(), 1e-5)
                if (hits[r].position != ids[r]) {
                    // allowed only between scores equal to float rounding (exact ties in quantised vectors)
                    val other = ids.indexOf(hits[r].position)
                    assertTrue("$label query $qi rank $r: kotlin ${hits[r].position} (${hits[r].score}), faiss ${ids[r]} (${sc[r]})",
                        other >= 0 && abs(sc[other] - sc[r]) <= tieTol)
                    ties++
                }
            }
        }
        return ties
    }

    @Test fun indexReproducesFaissTopK() {
        val m = manifest()
        val e = m["embeddings"] as Map<String, Any?>
        val n = (e["n"] as Long).toInt(); val dim = (e["dim"] as Long).toInt(); val k = (e["k"] as Long).toInt()
        val ids = e["ids"] as List<String>
        val emb = floats(e["file"] as String)
        val raw = floats(e["raw"] as String)
        val rows = (0 until n).map { emb.copyOfRange(it * dim, (it + 1) * dim) }
        val rawRows = (0 until n).map { raw.copyOfRange(it * dim, (it + 1) * dim) }

        // L2 normalisation of un-normalised outputs gives the model's normalised embeddings
        for (i in 0 until n) {
            val nrm = Embeddings.l2Normalize(rawRows[i])
            for (j in 0 until dim) assertEquals("row $i", rows[i][j], nrm[j], 1e-6f)
        }
        val index = CosineIndex(dim, "golden")
        for (i in 0 until n) index.add(ids[i], rawRows[i])
        val topk = e["topk"] as List<List<Any?>>; val scores = e["scores"] as List<List<Any?>>
        var ties = checkTopK("embeddings", index, rows, k, topk, scores, 0.0)

        // saved and reloaded index answers the same
        val bytes = ByteArrayOutputStream().also { index.save(it) }.toByteArray()
        val back = CosineIndex.load(ByteArrayInputStream(bytes), "golden")
        ties += checkTopK("reloaded", back, rows, k, topk, scores, 0.0)
        assertEquals(ids, (0 until back.size).map { back.id(it) })

        // int8 model output: dequantise + normalise like the app
        val qo = m["quantized_output"] as Map<String, Any?>
        val cb = contract(m, qo["contract"] as String)
        val qBytes = File(dir, qo["file"] as String).readBytes()
        val deq = (0 until n).map { Embeddings.fromOutput(cb, null, qBytes.copyOfRange(it * dim, (it + 1) * dim)) }
        val qIndex = CosineIndex(dim)
        deq.forEachIndexed { i, v -> qIndex.add(ids[i], v) }
        val qTies = checkTopK("int8 output", qIndex, deq, k, qo["topk"] as List<List<Any?>>, qo["scores"] as List<List<Any?>>, 1e-6)

        // a larger random set
        val rnd = m["random"] as Map<String, Any?>
        val rn = (rnd["n"] as Long).toInt(); val rq = (rnd["queries"] as Long).toInt(); val rk = (rnd["k"] as Long).toInt()
        val rv = floats(rnd["file"] as String)
        val rIndex = CosineIndex(dim)
        for (i in 0 until rn) rIndex.add("r$i", rv.copyOfRange(i * dim, (i + 1) * dim))
        ties += checkTopK("random", rIndex, (0 until rq).map { rv.copyOfRange(it * dim, (it + 1) * dim) }, rk,
            rnd["topk"] as List<List<Any?>>, rnd["scores"] as List<List<Any?>>, 0.0)
        assertEquals(0, ties)
        println("GOLDEN topk: faiss top-k reproduced ($n model embeddings k=$k, int8 outputs with $qTies exact-tie swaps, $rq random queries k=$rk)")
    }

    @Test fun contractsParse() {
        val m = manifest()
        val names = (m["contracts"] as Map<String, Any?>).keys
        for (name in names) {
            val c = contract(m, name)
            assertEquals(16, c.embedDim)
            assertEquals(c.input.shape, if (c.input.layout == "NHWC") listOf(1, c.preprocess.size, c.preprocess.size, 3)
                                         else listOf(1, 3, c.preprocess.size, c.preprocess.size))
        }
        val shipped = ModelContract.parse(File(dir, "model.json").readText())
        assertEquals(Quantization(0.0078125, -1), shipped.input.quantization)
        assertEquals("NHWC", shipped.input.layout)
        assertEquals(0.875, shipped.preprocess.crop, 0.0)
        assertEquals(127.0, shipped.preprocess.mean[1], 0.0)
        assertEquals(Quantization(1.0 / 128, 0), shipped.output.quantization)
        assertTrue(shipped.needsL2Normalize)
        assertEquals("0".repeat(64), shipped.source["sha256"])
        println("GOLDEN contract: ${names.size} model.json files parsed")
    }
}

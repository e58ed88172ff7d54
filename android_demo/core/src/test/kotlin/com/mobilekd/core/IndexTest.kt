package com.mobilekd.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.ByteArrayInputStream
import java.io.ByteArrayOutputStream

class IndexTest {
    private fun index(): CosineIndex {
        val idx = CosineIndex(3, "model-a")
        idx.add("x", floatArrayOf(1f, 0f, 0f))
        idx.add("y", floatArrayOf(0f, 2f, 0f))
        idx.add("xy", floatArrayOf(1f, 1f, 0f))
        idx.add("x2", floatArrayOf(5f, 0f, 0f))  // same direction as x: a tie, broken by insertion order
        return idx
    }

    @Test fun emptyIndexIsAClearError() {
        try { CosineIndex(4).search(floatArrayOf(1f, 0f, 0f, 0f), 3); fail() } catch (e: EmptyIndexException) {
            assertEquals("the index is empty: add images before searching", e.message)
        }
    }

    @Test fun topKByCosine() {
        val hits = index().search(floatArrayOf(2f, 0.1f, 0f), 3)
        assertEquals(listOf("x", "x2", "xy"), hits.map { it.id })
        assertEquals(hits[0].score, hits[1].score, 0f)
        assertTrue(hits[1].score > hits[2].score)
        assertEquals(4, index().search(floatArrayOf(0f, 0f, 1f), 10).size)
    }

    @Test fun dimensionErrors() {
        val idx = index()
        try { idx.add("z", floatArrayOf(1f)); fail() } catch (e: IndexException) { assertTrue(e.message!!.contains("3-d")) }
        try { idx.search(floatArrayOf(1f, 2f), 1); fail() } catch (e: IndexException) { assertTrue(e.message!!.contains("3-d")) }
        try { idx.search(floatArrayOf(1f, 2f, 3f), 0); fail() } catch (e: IndexException) { }
        try { idx.add("zero", floatArrayOf(0f, 0f, 0f)); fail() } catch (e: IndexException) { }
    }

    @Test fun saveLoadRoundTrip() {
        val idx = index()
        val bytes = ByteArrayOutputStream().also { idx.save(it) }.toByteArray()
        val back = CosineIndex.load(ByteArrayInputStream(bytes), "model-a")
        assertEquals(idx.size, back.size)
        val q = floatArrayOf(0.3f, 0.9f, 0.1f)
        assertEquals(idx.search(q, 4), back.search(q, 4))
        try { CosineIndex.load(ByteArrayInputStream(bytes), "model-b"); fail() } catch (e: IndexException) {
            assertTrue(e.message!!.contains("another model"))
        }
        try { CosineIndex.load(ByteArrayInputStream(bytes.copyOf(bytes.size - 5))); fail() } catch (e: IndexException) {
            assertTrue(e.message!!.contains("truncated"))
        }
        try { CosineIndex.load(ByteArrayInputStream("garbage!".toByteArray())); fail() } catch (e: IndexException) {
            assertTrue(e.message!!.contains("not a mobilekd index"))
        }
        val empty = ByteArrayOutputStream().also { CosineIndex(8).save(it) }.toByteArray()
        try { CosineIndex.load(ByteArrayInputStream(empty)).search(FloatArray(8) { 1f }, 1); fail() } catch (e: EmptyIndexException) { }
    }
}

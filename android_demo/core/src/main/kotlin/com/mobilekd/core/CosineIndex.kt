package com.mobilekd.core

import java.io.DataInputStream
import java.io.DataOutputStream
import java.io.EOFException
import java.io.InputStream
import java.io.OutputStream

data class Hit(val position: Int, val id: String, val score: Float)

/**
 * Exact cosine-similarity search (the app's counterpart of faiss `IndexFlatIP` on L2-normalised vectors):
 * vectors are L2-normalised when added and queries when searched; results are sorted by score, ties by
 * insertion order. [tag] records which model made the vectors (e.g. the checkpoint's sha256) so a saved index
 * is not reused with another model.
 */
class CosineIndex(val dim: Int, val tag: String = "") {
    init {
        if (dim <= 0) throw IndexException("index dimension must be positive, got $dim")
    }

    private val ids = ArrayList<String>()
    private var data = FloatArray(0)

    val size: Int get() = ids.size
    fun id(position: Int): String = ids[position]
    fun vector(position: Int): FloatArray = data.copyOfRange(position * dim, (position + 1) * dim)

    fun add(id: String, vector: FloatArray) {
        if (vector.size != dim) throw IndexException("vector has ${vector.size} values, the index holds $dim-d vectors")
        val v = Embeddings.l2Normalize(vector)
        if (data.size < (ids.size + 1) * dim) data = data.copyOf(maxOf(dim * 16, data.size * 2))
        System.arraycopy(v, 0, data, ids.size * dim, dim)
        ids.add(id)
    }

    fun search(query: FloatArray, k: Int): List<Hit> {
        if (ids.isEmpty()) throw EmptyIndexException()
        if (query.size != dim) throw IndexException("query has ${query.size} values, the index holds $dim-d vectors")
        if (k <= 0) throw IndexException("k must be positive, got $k")
        val q = Embeddings.l2Normalize(query)
        val scores = DoubleArray(ids.size) { i ->
            var s = 0.0
            val o = i * dim
            for (j in 0 until dim) s += q[j].toDouble() * data[o + j]
            s
        }
        val order = (0 until ids.size).sortedWith { a, b ->
            val c = scores[b].compareTo(scores[a])
            if (c != 0) c else a.compareTo(b)
        }
        return order.take(minOf(k, ids.size)).map { Hit(it, ids[it], scores[it].toFloat()) }
    }

    fun save(out: OutputStream) {
        val d = DataOutputStream(out.buffered())
        d.writeInt(MAGIC)
        d.writeInt(VERSION)
        d.writeUTF(tag)
        d.writeInt(dim)
        d.writeInt(ids.size)
        for (i in ids.indices) {
            d.writeUTF(ids[i])
            for (j in 0 until dim) d.writeFloat(data[i * dim + j])
        }
        d.flush()
    }

    companion object {
        private const val MAGIC = 0x4D4B4458  // "MKDX"
        private const val VERSION = 1

        /** Reads an index written by [save]; [expectTag] (if given) must match the saved tag. */
        fun load(input: InputStream, expectTag: String? = null): CosineIndex {
            val d = DataInputStream(input.buffered())
            try {
                if (d.readInt() != MAGIC) throw IndexException("not a mobilekd index file")
                val version = d.readInt()
                if (version != VERSION) throw IndexException("unsupported index version $version")
                val tag = d.readUTF()
                if (expectTag != null && tag != expectTag)
                    throw IndexException("the index was built with another model (tag \"$tag\", expected \"$expectTag\"): rebuild it")
                val dim = d.readInt()
                val n = d.readInt()
                if (n < 0) throw IndexException("corrupt index file (count $n)")
                val index = CosineIndex(dim, tag)
                index.data = FloatArray(n * dim)
                for (i in 0 until n) {
                    index.ids.add(d.readUTF())
                    for (j in 0 until dim) index.data[i * dim + j] = d.readFloat()
                }
                return index
            } catch (e: EOFException) {
                throw IndexException("index file is truncated", e)
            }
        }
    }
}

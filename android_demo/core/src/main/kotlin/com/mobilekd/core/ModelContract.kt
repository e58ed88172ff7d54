package com.mobilekd.core

import kotlin.math.abs

/**
 * The field names and values of model.json (format `mobilekd-export/1`), mirrored from the Python side's
 * `mobilekd/runtime/contract.py` (the source of truth). `tests/android_demo/test_core.py` compares these lists with the
 * Python definitions -- read from this file in the default run, through the CLI (`Cli.kt`, command `fields`) in
 * the slow one -- so a field added on one side only fails CI.
 */
object ContractFields {
    const val FORMAT = "mobilekd-export/1"
    val TOP_REQUIRED = listOf("format", "model_file", "runtime", "precision", "input", "output", "preprocess", "embed_dim")
    val TOP_OPTIONAL = listOf("source", "parity", "model_sha256", "quantization", "build")
    /** Every key a tensor spec may carry (input and output share the Python TensorSpec). */
    val TENSOR_FIELDS = listOf("name", "shape", "dtype", "layout", "quantization", "l2_normalized")
    val INPUT_REQUIRED = listOf("name", "shape", "dtype", "layout", "quantization")
    val OUTPUT_REQUIRED = listOf("name", "shape", "dtype", "quantization", "l2_normalized")
    val QUANTIZATION_FIELDS = listOf("scale", "zero_point")
    val PREPROCESS_FIELDS = listOf("size", "mean", "std", "crop", "interpolation", "channels")
    val RUNTIMES = listOf("onnx", "tflite", "coreml")
    val PRECISIONS = listOf("fp32", "fp16", "dynamic", "int8")
    val LAYOUTS = listOf("NHWC", "NCHW")
    val DTYPES = listOf("float32", "float16", "uint8", "int8")
    /** What this app can feed / read (float16 tensors are not handled by the app). */
    val APP_DTYPES = listOf("float32", "uint8", "int8")
    val APP_INTERPOLATIONS = listOf("bilinear")

    fun asMap(): Map<String, Any?> = linkedMapOf(
        "format" to FORMAT, "top_required" to TOP_REQUIRED, "top_optional" to TOP_OPTIONAL,
        "tensor_fields" to TENSOR_FIELDS, "input_required" to INPUT_REQUIRED, "output_required" to OUTPUT_REQUIRED,
        "quantization_fields" to QUANTIZATION_FIELDS, "preprocess_fields" to PREPROCESS_FIELDS,
        "runtimes" to RUNTIMES, "precisions" to PRECISIONS, "layouts" to LAYOUTS, "dtypes" to DTYPES,
    )
}

/** real = scale * (q - zeroPoint). */
data class Quantization(val scale: Double, val zeroPoint: Int)

class TensorSpec(
    val name: String,
    val shape: List<Int>,
    val dtype: String,
    val layout: String?,
    val quantization: Quantization?,
    val l2Normalized: Boolean?,
)

class Preprocess(
    val size: Int,
    val mean: DoubleArray,
    val std: DoubleArray,
    val crop: Double,
    val interpolation: String,
    val channels: String,
)

class ModelContract(
    val format: String,
    val modelFile: String,
    val runtime: String,
    val precision: String,
    val input: TensorSpec,
    val output: TensorSpec,
    val preprocess: Preprocess,
    val embedDim: Int,
    val source: Map<String, Any?>,
    val parity: Map<String, Any?>?,
    /** sha256 of the model file, when the exporter recorded it (see [checkModelSha256]). */
    val modelSha256: String? = null,
    /** The exporter's description of the quantisation scheme (informational). */
    val quantizationInfo: Map<String, Any?>? = null,
    /** How the file was built (informational). */
    val build: Map<String, Any?>? = null,
) {
    /** Throws [ModelMismatchException] when model.json records a sha256 and the model file's differs. */
    fun checkModelSha256(actual: String) {
        val expected = modelSha256 ?: return
        if (!expected.equals(actual, ignoreCase = true))
            throw ModelMismatchException(listOf("$modelFile sha256 is $actual, model.json says $expected: the model was replaced without its model.json"))
    }

    /** True when the consumer must L2-normalise the model output (the contract says it is not, or it is quantised). */
    val needsL2Normalize: Boolean get() = output.l2Normalized != true || output.quantization != null

    /**
     * Compares the model's real tensors (as the runtime reports them) with this contract; throws
     * [ModelMismatchException] listing every disagreement. Shapes are compared entry by entry, except that a
     * dynamic (-1) batch dimension on the model side matches any batch size.
     */
    fun checkModel(input: TensorInfo, output: TensorInfo) {
        val problems = ArrayList<String>()
        fun shapes(side: String, expected: List<Int>, actual: List<Int>) {
            val ok = expected.size == actual.size && expected.indices.all { i ->
                expected[i] == actual[i] || (i == 0 && (actual[i] == -1 || expected[i] == -1))
            }
            if (!ok) problems += "$side shape: model.json says $expected, the model has $actual"
        }
        shapes("input", this.input.shape, input.shape)
        shapes("output", this.output.shape, output.shape)
        if (input.dtype != this.input.dtype) problems += "input dtype: model.json says ${this.input.dtype}, the model has ${input.dtype}"
        if (output.dtype != this.output.dtype) problems += "output dtype: model.json says ${this.output.dtype}, the model has ${output.dtype}"
        val dim = output.shape.lastOrNull()
        if (dim != embedDim) problems += "embedding dim: model.json says $embedDim, the model outputs $dim"
        fun quant(side: String, expected: Quantization?, actual: Quantization?) {
            if (expected == null && actual == null) return
            if (expected == null || actual == null ||
                expected.zeroPoint != actual.zeroPoint ||
                abs(expected.scale - actual.scale) > 1e-6 * abs(expected.scale)
            ) problems += "$side quantization: model.json says $expected, the model has $actual"
        }
        if (this.input.dtype != "float32" || input.dtype != "float32") quant("input", this.input.quantization, input.quantization)
        if (this.output.dtype != "float32" || output.dtype != "float32") quant("output", this.output.quantization, output.quantization)
        if (problems.isNotEmpty()) throw ModelMismatchException(problems)
    }

    companion object {
        fun parse(text: String): ModelContract {
            val root = Json.parse(text) as? Map<*, *> ?: throw ContractException("model.json must be a JSON object")
            return fromMap(root)
        }

        fun fromMap(root: Map<*, *>): ModelContract {
            val r = Fields(root, "model.json")
            r.requireKeys(ContractFields.TOP_REQUIRED, ContractFields.TOP_OPTIONAL)
            val format = r.string("format")
            if (format != ContractFields.FORMAT) throw ContractException("model.json format \"$format\" is not \"${ContractFields.FORMAT}\"")
            val runtime = r.oneOf("runtime", ContractFields.RUNTIMES)
            val precision = r.oneOf("precision", ContractFields.PRECISIONS)
            val modelFile = r.string("model_file")
            if (modelFile.isBlank()) throw ContractException("model.json field 'model_file' is empty")
            val embedDim = r.int("embed_dim")
            if (embedDim <= 0) throw ContractException("model.json field 'embed_dim' must be positive, got $embedDim")
            val pre = preprocess(r.obj("preprocess"))
            val input = tensor(r.obj("input"), "input", ContractFields.INPUT_REQUIRED)
            val output = tensor(r.obj("output"), "output", ContractFields.OUTPUT_REQUIRED)
            val source = if (root.containsKey("source")) r.obj("source").map.entries.associate { it.key.toString() to it.value } else emptyMap()
            fun optObj(key: String) = if (root[key] != null) r.obj(key).map.entries.associate { it.key.toString() to it.value } else null
            val parity = optObj("parity")
            val modelSha = if (root["model_sha256"] != null) r.string("model_sha256") else null
            val quantInfo = optObj("quantization")
            val build = optObj("build")

            // internal consistency
            val layout = input.layout!!
            if (layout !in ContractFields.LAYOUTS) throw ContractException("model.json input.layout must be one of ${ContractFields.LAYOUTS}, got \"$layout\"")
            val s = pre.size
            val expected = if (layout == "NHWC") listOf(s, s, 3) else listOf(3, s, s)
            if (input.shape.size != 4 || input.shape.drop(1) != expected || (input.shape[0] != 1 && input.shape[0] != -1))
                throw ContractException("model.json input.shape ${input.shape} does not match layout $layout and preprocess.size $s (expected [1, ${expected.joinToString()}])")
            if (output.shape.size != 2 || output.shape[1] != embedDim)
                throw ContractException("model.json output.shape ${output.shape} does not match embed_dim $embedDim (expected [1, $embedDim])")
            return ModelContract(format, modelFile, runtime, precision, input, output, pre, embedDim, source, parity, modelSha, quantInfo, build)
        }

        private fun preprocess(f: Fields): Preprocess {
            f.requireKeys(ContractFields.PREPROCESS_FIELDS, emptyList())
            val size = f.int("size")
            if (size < 8) throw ContractException("${f.where}.size must be >= 8, got $size")
            val mean = f.numbers("mean", 3)
            val std = f.numbers("std", 3)
            if (std.any { !(it > 0.0) || it.isInfinite() }) throw ContractException("${f.where}.std must be positive, got ${std.toList()}")
            if (mean.any { it.isNaN() || it.isInfinite() }) throw ContractException("${f.where}.mean must be finite, got ${mean.toList()}")
            val crop = f.number("crop")
            if (!(crop > 0.0 && crop <= 1.0)) throw ContractException("${f.where}.crop must be in (0, 1], got $crop")
            val interpolation = f.string("interpolation")
            if (interpolation !in ContractFields.APP_INTERPOLATIONS)
                throw ContractException("${f.where}.interpolation \"$interpolation\" is not supported by the app (supported: ${ContractFields.APP_INTERPOLATIONS})")
            val channels = f.string("channels")
            if (channels != "RGB") throw ContractException("${f.where}.channels must be \"RGB\", got \"$channels\"")
            return Preprocess(size, mean, std, crop, interpolation, channels)
        }

        private fun tensor(f: Fields, side: String, required: List<String>): TensorSpec {
            f.requireKeys(required, ContractFields.TENSOR_FIELDS - required.toSet())
            val name = f.string("name")
            val shape = f.ints("shape")
            val dtype = f.oneOf("dtype", ContractFields.DTYPES)
            val layout = if (f.map["layout"] != null) f.string("layout") else null
            val q = if (f.map["quantization"] != null) {
                val qf = f.obj("quantization")
                qf.requireKeys(ContractFields.QUANTIZATION_FIELDS, emptyList())
                val scale = qf.number("scale")
                if (!(scale > 0.0) || scale.isInfinite()) throw ContractException("${qf.where}.scale must be positive, got $scale")
                Quantization(scale, qf.int("zero_point"))
            } else null
            if ((dtype == "int8" || dtype == "uint8") && q == null)
                throw ContractException("model.json $side.dtype is $dtype but $side.quantization is null")
            val l2 = if (f.map["l2_normalized"] != null) f.bool("l2_normalized") else null
            return TensorSpec(name, shape, dtype, layout, q, l2)
        }
    }
}

/** A tensor as the runtime reports it (shape, dtype name as in model.json, quantisation if any). */
data class TensorInfo(val shape: List<Int>, val dtype: String, val quantization: Quantization? = null)

/** Typed access to one JSON object, with errors naming the field's path. */
internal class Fields(val map: Map<*, *>, val where: String) {
    fun requireKeys(required: List<String>, optional: List<String>) {
        val missing = required.filter { !map.containsKey(it) }
        if (missing.isNotEmpty()) throw ContractException("$where is missing field(s): ${missing.joinToString(", ")}")
        val unknown = map.keys.map { it.toString() }.filter { it !in required && it !in optional }.sorted()
        if (unknown.isNotEmpty()) throw ContractException("$where has unknown field(s): ${unknown.joinToString(", ")}")
    }

    private fun path(key: String) = if (where == "model.json") "model.json field '$key'" else "$where.$key"
    private fun get(key: String): Any? = if (map.containsKey(key)) map[key] else throw ContractException("${path(key)} is missing")

    fun string(key: String): String = get(key) as? String ?: throw ContractException("${path(key)} must be a string")
    fun bool(key: String): Boolean = get(key) as? Boolean ?: throw ContractException("${path(key)} must be true or false")
    fun number(key: String): Double = (get(key) as? Number)?.toDouble() ?: throw ContractException("${path(key)} must be a number")
    fun int(key: String): Int {
        val v = get(key)
        return when {
            v is Long && v in Int.MIN_VALUE..Int.MAX_VALUE -> v.toInt()
            v is Double && v == Math.rint(v) && abs(v) < Int.MAX_VALUE -> v.toInt()
            else -> throw ContractException("${path(key)} must be an integer, got $v")
        }
    }
    fun ints(key: String): List<Int> {
        val list = get(key) as? List<*> ?: throw ContractException("${path(key)} must be a list of integers")
        return list.map { (it as? Long)?.toInt() ?: throw ContractException("${path(key)} must be a list of integers, got $list") }
    }
    fun numbers(key: String, n: Int): DoubleArray {
        val list = get(key) as? List<*> ?: throw ContractException("${path(key)} must be a list of $n numbers")
        if (list.size != n || list.any { it !is Number }) throw ContractException("${path(key)} must be a list of $n numbers, got $list")
        return DoubleArray(n) { (list[it] as Number).toDouble() }
    }
    fun oneOf(key: String, allowed: List<String>): String {
        val v = string(key)
        if (v !in allowed) throw ContractException("${path(key)} must be one of $allowed, got \"$v\"")
        return v
    }
    fun obj(key: String): Fields {
        val p = path(key)
        val m = get(key) as? Map<*, *> ?: throw ContractException("$p must be an object")
        return Fields(m, if (where == "model.json") "model.json $key" else "$where.$key")
    }
}

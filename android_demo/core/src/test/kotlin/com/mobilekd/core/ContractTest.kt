package com.mobilekd.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ContractTest {
    companion object {
        fun validMap(): MutableMap<String, Any?> = linkedMapOf(
            "format" to "mobilekd-export/1", "model_file" to "model.tflite", "runtime" to "tflite", "precision" to "int8",
            "input" to linkedMapOf("name" to "x", "shape" to listOf(1, 32, 32, 3), "dtype" to "int8", "layout" to "NHWC",
                "quantization" to linkedMapOf("scale" to 0.02, "zero_point" to -3)),
            "output" to linkedMapOf("name" to "e", "shape" to listOf(1, 16), "dtype" to "float32", "quantization" to null,
                "l2_normalized" to true),
            "preprocess" to linkedMapOf("size" to 32, "mean" to listOf(123.675, 116.28, 103.53),
                "std" to listOf(58.395, 57.12, 57.375), "crop" to 1.0, "interpolation" to "bilinear", "channels" to "RGB"),
            "embed_dim" to 16, "source" to linkedMapOf("checkpoint" to "c", "arch" to "a", "sha256" to "s"),
        )

        fun parse(m: Map<String, Any?>) = ModelContract.parse(Json.write(m))

        @Suppress("UNCHECKED_CAST")
        fun sub(m: MutableMap<String, Any?>, key: String) = m[key] as MutableMap<String, Any?>
    }

    private fun expectError(fragment: String, edit: (MutableMap<String, Any?>) -> Unit) {
        val m = validMap()
        edit(m)
        try {
            parse(m)
            fail("expected ContractException containing \"$fragment\"")
        } catch (e: ContractException) {
            assertTrue("message \"${e.message}\" should contain \"$fragment\"", e.message!!.contains(fragment))
        }
    }

    @Test fun parsesValidContract() {
        val c = parse(validMap())
        assertEquals("int8", c.input.dtype)
        assertEquals(Quantization(0.02, -3), c.input.quantization)
        assertEquals(listOf(1, 32, 32, 3), c.input.shape)
        assertEquals(16, c.embedDim)
        assertEquals(32, c.preprocess.size)
        assertEquals(58.395, c.preprocess.std[0], 0.0)
        assertTrue(!c.needsL2Normalize)
        assertEquals(null, c.parity)
    }

    @Test fun optionalFields() {
        val m = validMap(); m.remove("source"); m["parity"] = linkedMapOf("passed" to true)
        assertEquals(true, parse(m).parity!!["passed"])
    }

    @Test fun exporterMetadataFields() {
        val m = validMap()
        m["model_sha256"] = "ab".repeat(32)
        m["quantization"] = linkedMapOf("scheme" to "int8-static", "calibration" to null)
        m["build"] = linkedMapOf("exporter" to "export.tflite", "notes" to listOf<String>())
        val c = parse(m)
        assertEquals("int8-static", c.quantizationInfo!!["scheme"])
        c.checkModelSha256("AB".repeat(32))
        try { c.checkModelSha256("cd".repeat(32)); fail() } catch (e: ModelMismatchException) {
            assertTrue(e.message!!.contains("replaced without its model.json"))
        }
    }

    @Test fun missingTopLevelField() = expectError("model.json is missing field(s): embed_dim") { it.remove("embed_dim") }
    @Test fun unknownTopLevelField() = expectError("model.json has unknown field(s): colour") { it["colour"] = "red" }
    @Test fun missingInputField() = expectError("model.json input is missing field(s): layout") { sub(it, "input").remove("layout") }
    @Test fun unknownOutputField() = expectError("model.json output has unknown field(s): norm") { sub(it, "output")["norm"] = 2 }
    @Test fun missingPreprocessField() = expectError("model.json preprocess is missing field(s): crop") { sub(it, "preprocess").remove("crop") }
    @Test fun unknownPreprocessField() = expectError("model.json preprocess has unknown field(s): flip") { sub(it, "preprocess")["flip"] = true }
    @Test fun unknownQuantizationField() = expectError("has unknown field(s): axis") {
        @Suppress("UNCHECKED_CAST") (sub(it, "input")["quantization"] as MutableMap<String, Any?>)["axis"] = 0
    }
    @Test fun wrongFormat() = expectError("is not \"mobilekd-export/1\"") { it["format"] = "mobilekd-export/2" }
    @Test fun wrongRuntime() = expectError("'runtime' must be one of") { it["runtime"] = "tensorflow" }
    @Test fun wrongType() = expectError("'embed_dim' must be an integer") { it["embed_dim"] = "16" }
    @Test fun wrongLayout() = expectError("input.layout must be one of") { sub(it, "input")["layout"] = "HWC" }
    @Test fun shapeDisagreesWithLayout() = expectError("does not match layout NCHW") { sub(it, "input")["layout"] = "NCHW" }
    @Test fun shapeDisagreesWithSize() = expectError("preprocess.size 24") { sub(it, "preprocess")["size"] = 24 }
    @Test fun outputDisagreesWithEmbedDim() = expectError("does not match embed_dim 32") { it["embed_dim"] = 32 }
    @Test fun quantizedWithoutParameters() = expectError("input.dtype is int8 but input.quantization is null") { sub(it, "input")["quantization"] = null }
    @Test fun unsupportedInterpolation() = expectError("not supported by the app") { sub(it, "preprocess")["interpolation"] = "bicubic" }
    @Test fun badCrop() = expectError("crop must be in (0, 1]") { sub(it, "preprocess")["crop"] = 1.5 }
    @Test fun badStd() = expectError("std must be a list of 3 numbers") { sub(it, "preprocess")["std"] = listOf(1, 2) }

    @Test fun invalidJson() {
        for (text in listOf("", "{", "[1, 2]", "{\"format\": }", "{\"a\": 1} x", "{\"a\": 1, \"a\": 2}")) {
            try { ModelContract.parse(text); fail("should reject: $text") } catch (e: ContractException) { }
        }
    }

    @Test fun modelMatchesContract() {
        val c = parse(validMap())
        c.checkModel(TensorInfo(listOf(1, 32, 32, 3), "int8", Quantization(0.02, -3)), TensorInfo(listOf(1, 16), "float32"))
    }

    @Test fun modelMismatchListsEveryProblem() {
        val c = parse(validMap())
        try {
            c.checkModel(TensorInfo(listOf(1, 3, 32, 32), "float32"), TensorInfo(listOf(1, 128), "float32"))
            fail("expected ModelMismatchException")
        } catch (e: ModelMismatchException) {
            val text = e.message!!
            assertTrue(text, text.contains("input shape: model.json says [1, 32, 32, 3], the model has [1, 3, 32, 32]"))
            assertTrue(text, text.contains("input dtype: model.json says int8, the model has float32"))
            assertTrue(text, text.contains("embedding dim: model.json says 16, the model outputs 128"))
            assertTrue(text, text.contains("input quantization"))
        }
    }

    @Test fun fieldListsAreConsistent() {
        val m = validMap()
        assertEquals(ContractFields.TOP_REQUIRED.toSet(), m.keys - "source")
        assertTrue(ContractFields.TENSOR_FIELDS.containsAll(ContractFields.INPUT_REQUIRED + ContractFields.OUTPUT_REQUIRED))
        assertEquals(ContractFields.PREPROCESS_FIELDS.toSet(), sub(m, "preprocess").keys)
    }
}

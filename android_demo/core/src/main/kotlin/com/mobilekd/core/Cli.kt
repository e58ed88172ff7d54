package com.mobilekd.core

import java.io.File
import kotlin.system.exitProcess

/**
 * `fields`: the model.json field names and allowed values this reader accepts, as JSON (compared with
 * mobilekd/runtime/contract.py by tests/android_demo/test_core.py). `check model.json`: parse and validate one contract.
 */
fun main(args: Array<String>) {
    when (args.firstOrNull()) {
        "fields" -> println(Json.write(ContractFields.asMap()))
        "check" -> {
            val path = args.getOrNull(1) ?: run { System.err.println("usage: check model.json"); exitProcess(2) }
            try {
                val c = ModelContract.parse(File(path).readText())
                println("ok: ${c.runtime} ${c.precision}, input ${c.input.dtype} ${c.input.layout} ${c.input.shape}, embed_dim ${c.embedDim}")
            } catch (e: MobileKdException) {
                System.err.println("error: ${e.message}")
                exitProcess(1)
            }
        }
        else -> { System.err.println("usage: fields | check model.json"); exitProcess(2) }
    }
}

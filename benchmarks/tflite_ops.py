"""Which ops of a ``.tflite`` file the XNNPACK delegate runs, and which fall back to LiteRT's own CPU kernels.

What is measured (``delegation``): the file is opened with ``ai_edge_litert``'s ``Interpreter`` and its
default op resolver, which applies the XNNPACK delegate when the tensors are allocated (as every runner and
benchmark here runs it). Delegation
replaces each run of supported ops by one ``DELEGATE`` node whose inputs and outputs are that partition's
boundary tensors; the original nodes stay listed (``Interpreter._get_ops_details``, the only op listing the
Python API has) but no longer run. A node belongs to a partition when it is reached walking back from the
partition's outputs through producers without crossing the partition's inputs; every node of no partition
runs on the default CPU kernels: that is a fallback, reported by op type and dtype (``SQRT/int8``).

Per-op time is not measured here: the Python interpreter exposes no op profiler (the per-op profiler is
C++-only, ``benchmark_model --enable_op_profiling=true``), so the int8-vs-fp32 ratio is explained from this
graph-level evidence -- what runs where, in which dtype -- and the CPU's SIMD features (``benchmarks.machine``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

DELEGATE_OP = "DELEGATE"


def _op_rows(interpreter) -> list[dict]:
    """Every node of the primary subgraph: index, op type, input/output tensor indices (optional ones dropped)."""
    return [{"index": int(op["index"]), "op": op["op_name"], "inputs": [int(t) for t in op["inputs"] if t >= 0],
             "outputs": [int(t) for t in op["outputs"] if t >= 0]} for op in interpreter._get_ops_details()]


def _dtype_names(interpreter) -> dict[int, str]:
    return {int(t["index"]): np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


def partition_members(ops: list[dict], delegate: dict) -> set[int]:
    """The original nodes a ``DELEGATE`` node replaced: walking back from its outputs through each tensor's
    producer, stopping at its inputs (weights, graph inputs and the tensors other partitions hand over)."""
    producer = {t: op["index"] for op in ops if op["op"] != DELEGATE_OP for t in op["outputs"]}
    by_index = {op["index"]: op for op in ops}
    boundary, members = set(delegate["inputs"]), set()
    stack = [t for t in delegate["outputs"] if t in producer]
    while stack:
        node = producer[stack.pop()]
        if node in members:
            continue
        members.add(node)
        stack.extend(t for t in by_index[node]["inputs"] if t not in boundary and t in producer)
    return members


def summarize(ops: list[dict], dtypes: dict[int, str]) -> dict:
    """Delegation report of a graph listed after delegation: ``xnnpack_nodes`` / ``total_nodes`` (original ops),
    ``partitions`` (DELEGATE nodes), ``op_counts`` by type, ``fallback_ops`` as ``{"OP/dtype": count}``, the dtype
    being that of the op's first input (what picks its kernel), and ``fallback_nodes`` (index, op, dtype)."""
    original = [op for op in ops if op["op"] != DELEGATE_OP]
    delegates = [op for op in ops if op["op"] == DELEGATE_OP]
    delegated = set().union(*(partition_members(ops, d) for d in delegates)) if delegates else set()
    fallback = [op for op in original if op["index"] not in delegated]

    def dtype(op):
        return dtypes.get(op["inputs"][0], "?") if op["inputs"] else "?"

    return {"total_nodes": len(original), "xnnpack_nodes": len(original) - len(fallback),
            "partitions": len(delegates), "op_counts": dict(Counter(op["op"] for op in original)),
            "fallback_ops": dict(Counter(f"{op['op']}/{dtype(op)}" for op in fallback)),
            "fallback_nodes": [{"index": op["index"], "op": op["op"], "dtype": dtype(op)} for op in fallback]}


def delegation(path: str | Path, threads: int = 1) -> dict:
    """The XNNPACK delegation report of one ``.tflite`` file (``summarize``) and ``xnnpack_share`` (0..1)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()  # the default delegate (XNNPACK) is applied here
    report = summarize(_op_rows(interpreter), _dtype_names(interpreter))
    report["xnnpack_share"] = report["xnnpack_nodes"] / report["total_nodes"] if report["total_nodes"] else None
    return report


def format_delegation(label: str, report: dict) -> str:
    """One line: ``label: 38/40 nodes on XNNPACK (3 partitions); fallback: SQRT/int8 x1, DIV/int8 x1``."""
    fallback = ", ".join(f"{op} x{n}" for op, n in sorted(report["fallback_ops"].items())) or "none"
    return (f"{label}: {report['xnnpack_nodes']}/{report['total_nodes']} nodes on XNNPACK "
            f"({report['partitions']} partition(s)); fallback: {fallback}")

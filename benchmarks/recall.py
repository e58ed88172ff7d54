"""Retrieval quality of checkpoints, model names and exported files: Recall@1/2/4/8, MAP@R, R-Precision.

    python -m benchmarks.recall MODEL... --data DATA [--split test] [--gallery-model M [--gallery-size PX]]
        [--out recall.json]

Symmetric: every test image queries all the others, all embedded by MODEL (leave-one-out). Asymmetric
(``--gallery-model M``): queries embedded by MODEL, the gallery (the same images) by M -- e.g. an int8
``.tflite`` on the phone searching a gallery indexed by the float checkpoint or by the teacher, or a student's
128 px queries against the gallery it embedded at 224 px (``--size 128 --gallery-size 224``). The metric
code is ``mobilekd.metrics.retrieval_metrics`` (one implementation for training, export and benchmarks).

MODEL may also be an ``.npz`` of precomputed embeddings (arrays ``keys``, ``embeddings``).

Every symmetric row carries 95 % bootstrap intervals of R@1 and MAP@R (``symmetric.ci95``: 1000 resamples of
the queries, seed 0). ``--save-embeddings DIR`` keeps each model's embeddings as ``DIR/<label slug>.npz``
(``embeddings``, ``labels``, ``paths``: image keys of the data set) for ``benchmarks.html_report``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks import RESULT_FORMAT, write_result
from benchmarks.machine import describe, load_average
from benchmarks.targets import load_target
from mobilekd.errors import MobileKDError, ModelError, cli_entry
from mobilekd.io import atomic_path, check_writable_dir, check_writable_file, require_file
from mobilekd.metrics import bootstrap_ci, format_table, per_query_metrics, retrieval_metrics, summarize
from mobilekd.threads import usable_cores

def recall_from_embeddings(query, labels, gallery=None, gallery_labels=None) -> dict[str, float]:
    """The metrics of hand-made or precomputed embeddings (symmetric when ``gallery`` is None)."""
    return retrieval_metrics(query, labels, gallery, labels if gallery is not None and gallery_labels is None
                             else gallery_labels)

def make_embedder(spec: str, threads: int | None = None, label: str | None = None, size: int | None = None):
    """(label, kind, embedder) for ``embed_image_set``; the runtime of an exported file is its own."""
    path = Path(spec)
    if path.suffix.lower() == ".npz":
        from mobilekd.data.embeddings_npz import PrecomputedEmbeddings

        require_file(path, "embeddings file", ModelError)
        return label or path.name, "embeddings", "embeddings", PrecomputedEmbeddings(path)
    target = load_target(spec, size=size, label=label)
    if target.model is not None:
        target.model.spec.preprocess = target.preprocess  # --size: the model embeds at the size asked for
        return target.label, target.kind, "torch-eager", target.model
    from mobilekd.runtime.file_embedder import FileEmbedder

    runtime = target.runtimes(compile=False)[0]
    # the exported file through mobilekd.runtime.runners, exactly as export parity and a black-box teacher run it
    embedder = FileEmbedder(target.path, threads or usable_cores(), runtime, target.contract)
    return target.label, target.kind, runtime, embedder

def embeddings_file_name(label: str, taken: set[str]) -> str:
    """``<slug of label>.npz``, unique among ``taken`` (two labels with one slug get -2, -3 ...)."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", label).strip("-.") or "model"
    name, n = f"{slug}.npz", 1
    while name in taken:
        n += 1
        name = f"{slug}-{n}.npz"
    taken.add(name)
    return name


def save_embeddings_npz(path: Path, embeddings, labels, paths) -> None:
    """One model's retrieval embeddings (float32, as searched), labels and image keys, written atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, embeddings=np.asarray(embeddings, dtype=np.float32), labels=np.asarray(labels),
                 paths=np.asarray(paths, dtype=str))


def symmetric_metrics(query, labels) -> dict:
    """Leave-one-out metrics plus ``ci95``: bootstrap intervals of R@1 and MAP@R over the same per-query values."""
    values = per_query_metrics(query, labels)
    return {**summarize(values), "ci95": bootstrap_ci(values)}


def evaluate(specs: list[str], data: str, split: str = "test", gallery_model: str | None = None,
             labels: list[str] | None = None, batch_size: int = 64, threads: int | None = None,
             progress: bool = True, layout: str = "auto", size: int | None = None,
             save_embeddings: str | None = None, gallery_size: int | None = None) -> dict:
    import torch

    from mobilekd.data import load_image_set
    from mobilekd.inference import embed_image_set

    if threads:
        torch.set_num_threads(threads)
    images = load_image_set(data, split, layout)
    result = {"format": RESULT_FORMAT, "kind": "recall", "machine": describe(),
              "data": {"path": str(data), "split": split, "images": len(images), "classes": images.num_classes},
              "gallery_model": gallery_model, "results": [], "errors": [], "load_average": load_average()}
    embed = lambda m, name: embed_image_set(m, images, batch_size=batch_size, progress=progress, desc=f"embed {name}")  # noqa: E731
    gallery = None
    if gallery_model:
        g_label, _, g_runtime, g_model = make_embedder(gallery_model, threads, size=gallery_size or size)
        gallery = embed(g_model, g_label)
        result["gallery"] = {"model": g_label, "runtime": g_runtime, "size": gallery_size or size}
    saved: set[str] = set()
    for i, spec in enumerate(specs):
        try:
            label, kind, runtime, model = make_embedder(spec, threads, labels[i] if labels and i < len(labels) else None,
                                                        size)
            query = embed(model, label)
            row = {"model": label, "spec": spec, "kind": kind, "runtime": runtime, "embed_dim": int(query.shape[1]),
                   "symmetric": symmetric_metrics(query, images.labels)}
            if save_embeddings:
                row["embeddings"] = embeddings_file_name(label, saved)
                save_embeddings_npz(Path(save_embeddings) / row["embeddings"], query, images.labels, images.keys)
            if gallery is not None:
                try:
                    row["asymmetric"] = retrieval_metrics(query, images.labels, gallery, images.labels)
                    row["asymmetric"]["gallery"] = result["gallery"]["model"]
                except MobileKDError as error:
                    row["asymmetric_error"] = str(error)
            result["results"].append(row)
        except MobileKDError as error:
            result["errors"].append({"model": spec, "error": str(error)})
    return result

def format_recall(result: dict) -> str:
    rows = {}
    for row in result["results"]:
        rows[row["model"]] = row["symmetric"]
        if "asymmetric" in row:
            rows[f"{row['model']} -> {row['asymmetric']['gallery']} gallery"] = row["asymmetric"]
    return format_table(rows, ("R@1", "R@2", "R@4", "R@8", "MAP@R", "R-Precision"))

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recall", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="checkpoint folder, model name, .onnx, .tflite, or .npz of embeddings")
    parser.add_argument("--data", required=True, help="data set (folder, zip, CUB/Cars/SOP layout)")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"),
                        help="class-disjoint split to evaluate (default test)")
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--gallery-model", help="embed the gallery with this model (asymmetric retrieval)")
    parser.add_argument("--labels", help="comma-separated names for the models in the tables")
    parser.add_argument("--size", type=int, help="input size for checkpoints and names (exported files keep theirs)")
    parser.add_argument("--gallery-size", type=int, help="input size of --gallery-model (default: --size): e.g. "
                        "a student's 128 px queries against the gallery it embedded at 224 px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--save-embeddings", metavar="DIR",
                        help="write each model's embeddings, labels and image keys to DIR/<label>.npz")
    parser.add_argument("--quiet", action="store_true")
    return parser

@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise MobileKDError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise MobileKDError(f"--threads must be >= 1 (or left out: all usable cores), got {args.threads}")
    for flag, value in (("--size", args.size), ("--gallery-size", args.gallery_size)):
        if value is not None and value < 1:
            raise MobileKDError(f"{flag} must be a positive pixel count, got {value}")
    if args.gallery_size and not args.gallery_model:
        raise MobileKDError("--gallery-size is the size of --gallery-model: give --gallery-model too")
    if args.out:
        check_writable_file(args.out)  # before the measurement, not after it
    if args.save_embeddings:
        check_writable_dir(args.save_embeddings, "--save-embeddings")
    threads = args.threads
    if threads and threads > usable_cores():
        print(f"warning: --threads {threads} exceeds the {usable_cores()} usable core(s): capped", file=sys.stderr)
        threads = usable_cores()
    result = evaluate(args.models, args.data, args.split, args.gallery_model,
                      args.labels.split(",") if args.labels else None, args.batch_size, threads,
                      not args.quiet, args.layout, args.size, args.save_embeddings, args.gallery_size)
    if not result["results"]:
        raise MobileKDError("nothing could be measured: " + "; ".join(f"{e['model']}: {e['error']}" for e in result["errors"]))
    for e in result["errors"]:
        print(f"warning: {e['model']}: {e['error']}", file=sys.stderr)
    if args.out:
        write_result(args.out, result)
    print(format_recall(result))
    return 0

if __name__ == "__main__":
    sys.exit(main())

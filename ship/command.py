"""From a folder of photos to a phone-ready, checked model bundle, in one command.

    mobilekd ship --data PHOTOS --out OUT [--config cub] [--formats tflite,onnx] [--precisions int8,fp32]
    mobilekd ship --from CHECKPOINT --out OUT        # skip training

Stages (each printed with its elapsed time, each skipped on a re-run when its inputs are unchanged):
train (``mobilekd.distill`` with the recipe) -> export (every format x precision, each through its parity
gates; a failing gate stops everything) -> latency -> recall (teacher, float student, every file) -> report ->
android/ -> MODEL_CARD.md + manifest.json -> publish. ``OUT`` receives the finished bundle by a rename, or
nothing: see ``ship.bundle``. Reference: docs/ship.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mobilekd.errors import MobileKDError, cli_entry
from ship import plan as plans
from ship import steps
from ship.bundle import Layout, claim
from ship.plan import Plan
from ship.stages import Stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mobilekd ship`` (shared by ``mobilekd ship`` and the top-level help)."""
    parser.add_argument("--data", help="the photos: PHOTOS/<class>/<image> (or any layout of docs/data.md); the "
                                       "first half of the classes train, the rest test (default with --from: the "
                                       "checkpoint's data)")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help=f"the training recipe (default {plans.DEFAULT_RECIPE}: the measured recipe of the "
                             "shipped ImageNet student, mobilekd/configs/cub.yaml); --data overrides its data")
    parser.add_argument("--from", dest="source", metavar="CKPT", help="ship this checkpoint (no training)")
    parser.add_argument("--out", required=True, help="the bundle folder (replaced only if a ship wrote it)")
    parser.add_argument("--formats", default="tflite,onnx", help="comma-separated: tflite, onnx, coreml "
                                                                 "(default tflite,onnx)")
    parser.add_argument("--precisions", default="int8,fp32", help="comma-separated: int8, fp32, fp16, dynamic "
                                                                  "(default int8,fp32)")
    parser.add_argument("--gallery", metavar="DIR", help="also ship this folder of photos as an on-device "
                                                         "search gallery (embeddings, ids, thumbnails) in android/")
    parser.add_argument("--gallery-precision", default="int8", choices=("int8", "fp16"))
    parser.add_argument("--unlabeled", metavar="DIR|none",
                        help="training: also distil on these unlabeled photos; the photos the app will search are "
                             "the strongest measured lever (docs/distillation.md). Default: the --gallery photos "
                             "when given; none: only --data")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for training, export and recall "
                                                               "(default 0: the cores idle at the start); "
                                                               "latency is always measured on 1 thread")
    parser.add_argument("--calib-images", type=int, default=128, help="int8 calibration images (default 128)")
    parser.add_argument("--latency-runs", type=int, default=30, help="timed runs per file (default 30)")
    parser.add_argument("--qat", action="store_true",
                        help="int8: fine-tune the student with int8 simulated first (export.qat, 2 epochs on its "
                             "own teacher cache) and export the int8 files from that student")
    parser.add_argument("--allow-regression", action="store_true",
                        help="ship a student even if training left it below the student it started from (by "
                             "default that stops the ship before any export)")
    parser.add_argument("--float-convs", type=int, default=0, metavar="N",
                        help="int8: keep the first N convolutions float (the usual fix for a failing int8 gate)")
    gates = parser.add_argument_group("parity gates (default: each exporter's own)")
    for name in steps.GATE_FLAGS:
        gates.add_argument(f"--{name.replace('_', '-')}", type=float)


def make_plan(args) -> Plan:
    """The checked options: every bad input is refused here, before any work and before anything is written."""
    from mobilekd.threads import auto_threads

    for name, low in (("threads", 0), ("calib_images", 1), ("latency_runs", 2), ("float_convs", 0)):
        if getattr(args, name) < low:
            raise MobileKDError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    check_gates(args)
    if args.source and args.config:
        raise MobileKDError("--from ships a trained checkpoint; --config trains one: give one of them")
    exports = plans.parse_exports(args.formats, args.precisions)
    if args.gallery and steps.android_source(exports) is None:
        raise MobileKDError("--gallery needs a TFLite file for android/: add tflite to --formats")
    if args.gallery and not Path(args.gallery).is_dir():
        raise MobileKDError(f"--gallery {args.gallery}: no such folder")
    unlabeled = unlabeled_photos(args)
    if args.qat and not any(precision == "int8" for _, precision in exports):
        raise MobileKDError("--qat fine-tunes for int8: add int8 to --precisions")
    threads = args.threads or auto_threads()
    out = Path(args.out).expanduser().absolute()
    checkpoint, recipe, config, data, arch = student_source(args, Layout(out), threads)
    layout_name, fraction = config.get("layout") or "auto", float(config.get("train_fraction") or 0.5)
    fingerprint = plans.check_data(data, layout_name, fraction)
    if args.qat and not config.get("teacher"):
        raise MobileKDError(f"--qat fine-tunes with the student's teacher, and {args.source or args.config} "
                            "records none: ship a mobilekd.distill run, or leave out --qat")
    gates = {name: getattr(args, name) for name in steps.GATE_FLAGS if getattr(args, name) is not None}
    return Plan(out, str(data), recipe, Path(args.source) if args.source else None, checkpoint, exports, threads,
                args.calib_images, args.latency_runs, args.float_convs, gates, args.gallery, args.gallery_precision,
                config.get("teacher") or None, config.get("teacher_size"), layout_name, fraction, fingerprint,
                plans.structural_only(exports), plans.title_for(str(data), arch), qat=args.qat,
                unlabeled=unlabeled, unlabeled_fingerprint=plans.unlabeled_fingerprint(unlabeled),
                allow_regression=args.allow_regression)


def unlabeled_photos(args) -> str | None:
    """The unlabeled photos the train stage distils on besides --data: --unlabeled, else the --gallery photos
    (what the app will search: the measured lever), none with --from (nothing is trained) or --unlabeled none."""
    if args.unlabeled and args.unlabeled != "none" and args.source:
        raise MobileKDError("--unlabeled adds photos to training; --from ships a trained checkpoint: give one of them")
    if args.source or args.unlabeled == "none":
        return None
    folder = args.unlabeled or args.gallery
    if folder and not Path(folder).is_dir():
        raise MobileKDError(f"--unlabeled {folder}: no such folder")
    return folder


def student_source(args, layout: Layout, threads: int):
    """(checkpoint, recipe, its config, data, architecture): the ``--from`` checkpoint and the data it was trained
    on, or the checkpoint the recipe will train in the work folder (the recipe parsed now: a bad one fails
    first)."""
    if args.source:
        from export.parity import resolve_data_path

        checkpoint, meta = plans.source_checkpoint(args.source)
        config = meta.get("config") or {}
        data = args.data or resolve_data_path(config.get("data"), checkpoint)
        return checkpoint, None, config, data, (meta.get("spec") or {}).get("arch", "student")
    recipe = args.config or plans.DEFAULT_RECIPE
    parsed = plans.recipe_config(recipe, args.data, layout.checkpoint, threads)
    return layout.checkpoint, recipe, vars(parsed), args.data or parsed.data, parsed.student


def check_gates(args) -> None:
    """Gate overrides no file could mean (a cosine above 1, ...), refused before any work, by the exporters' own
    check."""
    from export.common import gates_from_args

    gates_from_args(argparse.Namespace(**{name: getattr(args, name) for name in steps.GATE_FLAGS}), "fp32")


def run(plan: Plan) -> Layout:
    """Every stage, then the bundle; returns the published layout."""
    from ship.publish import assemble

    layout = claim(plan.out)
    exports = plan.exports
    for fmt in sorted(plan.structural_only):
        print(f"note: {fmt} files get a structural check only here (no {fmt} runtime on "
              f"{sys.platform}): no parity, latency or recall numbers for them", flush=True)
    has_android = steps.android_source(exports) is not None
    total = 1 + plan.qat + len(exports) + 3 + has_android + 1
    stages = Stages(layout.work / "stages.json", total, lambda line: print(line, flush=True))
    if plan.source is None:
        stages.run("train", steps.train_key(plan), [plan.checkpoint / "model.safetensors"],
                   lambda: steps.train(plan, layout, stages))
    else:
        stages.run("source checkpoint", {"checkpoint": steps.checkpoint_sha(plan.checkpoint)},
                   [plan.checkpoint / "model.safetensors"], lambda: None)
    steps.check_no_regression(plan)
    ckpt = steps.checkpoint_sha(plan.checkpoint)
    if plan.qat:
        stages.run("qat", {"checkpoint": ckpt, "calib_images": plan.calib_images},
                   [layout.qat_checkpoint / "model.safetensors"], lambda: steps.qat(plan, layout, stages))
    for fmt, precision in exports:
        name = f"{fmt}-{precision}"
        stages.run(f"export {name}", steps.export_key(plan, fmt, precision, ckpt), [layout.export(name)],
                   lambda f=fmt, p=precision: steps.export(plan, layout, stages, f, p))
    built = {name: stages.done[f"export {name}"]["outputs"] for name in (f"{f}-{p}" for f, p in exports)}
    measured = {"checkpoint": ckpt, "exports": built, "data": plan.data_fingerprint}  # not threads: see train_key
    stages.run("latency", {**measured, "runs": plan.latency_runs}, [layout.results / "latency.json"],
               lambda: steps.latency(plan, layout, stages, exports))
    stages.run("recall", {**measured, "teacher": [plan.teacher, plan.teacher_size]},
               [layout.results / "recall.json", layout.embeddings],
               lambda: steps.recall(plan, layout, stages, exports))
    stages.run("report", {"latency": stages.done["latency"]["outputs"], "recall": stages.done["recall"]["outputs"],
                          "title": plan.title}, [layout.report],
               lambda: steps.report(plan, layout, stages, exports))
    if has_android:
        source = "-".join(steps.android_source(exports))
        stages.run("android", {"model": built[source], "gallery": gallery_key(plan)}, [layout.android],
                   lambda: steps.android(plan, layout, stages, exports))
    started = time.perf_counter()
    print(f"[{total}/{total}] model card, manifest, publish ...", flush=True)
    assemble(plan, layout, stages)
    print(f"[{total}/{total}] model card, manifest, publish ... {time.perf_counter() - started:.1f} s", flush=True)
    return layout


def gallery_key(plan: Plan):
    if not plan.gallery:
        return None
    from mobilekd.data import load_image_set
    from mobilekd.teacher_cache import data_fingerprint

    return [data_fingerprint(load_image_set(plan.gallery, layout="unlabeled")), plan.gallery_precision]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilekd ship", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from mobilekd.io import unlock_folder

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    plan = make_plan(args)
    plan.argv = argv
    try:
        layout = run(plan)
    finally:
        unlock_folder(plan.out, beside=True)
    from ship.publish import summary

    print(summary(layout, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

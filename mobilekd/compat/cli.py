"""``python -m mobilekd.compat``: the embed / fit / evaluate / upgrade / teacher subcommands (see the package
docstring for their synopsis)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mobilekd.compat.gallery import embed_model, load_split, write_embedding_file
from mobilekd.compat.report import format_evaluation, format_fit, format_teacher, format_upgrade, write_markdown
from mobilekd.compat.transform import HEADS, FitConfig
from mobilekd.compat.workflows import MANIFEST, evaluate, fit, teacher_check, upgrade_check
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_writable_dir, check_writable_file, write_json


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) / 100.0 for v in text.split(",") if v.strip()]
    except ValueError:
        raise MobileKDError(f"--reject takes comma-separated percentages, got {text!r}") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise MobileKDError(f"--reject percentages must be in [0, 100), got {text!r}")
    return values


DESCRIPTION = ("Compatible embeddings: asymmetric retrieval, cross-model compatible ensembles, gallery rejection, "
               "upgrades.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mobilekd.compat", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, split):
        p.add_argument("--data", required=True, help="data set (folder, zip, CUB/Cars/SOP layout)")
        p.add_argument("--split", default=split, choices=("train", "test", "all"))
        p.add_argument("--layout", default="auto")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
        p.add_argument("--out", help="output folder (JSON + Markdown)")
        p.add_argument("--progress", action="store_true")

    p = sub.add_parser("embed", help="embed a split once into an .npz (keys, embeddings, labels)")
    p.add_argument("model")
    common(p, "all")
    p.add_argument("--size", type=int, help="input size for model names/checkpoints")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("fit", help="fit gallery -> query transformations on the train split")
    p.add_argument("--query", required=True, help="query (student) model: checkpoint, name, .onnx or .npz")
    p.add_argument("--gallery", required=True, nargs="+", help="N >= 2 gallery models (.npz files recommended)")
    common(p, "train")
    p.add_argument("--head", default="linear", choices=HEADS)
    p.add_argument("--hidden", type=int, default=1024, help="MLP hidden width")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--kl-weight", type=float, default=0.0, help="weight of the in-batch similarity KL term")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query-size", type=int)
    p.add_argument("--gallery-size", type=int, help="input size for gallery model names (e.g. 160)")

    p = sub.add_parser("evaluate", help="asymmetric R@1 per gallery model, ensemble, rejection curve")
    p.add_argument("--transforms", required=True, help="folder written by `fit`")
    p.add_argument("--query", help="override the query model recorded by `fit` (e.g. an .npz)")
    p.add_argument("--gallery", nargs="+", help="override the gallery models recorded by `fit` (same order)")
    common(p, "test")
    p.add_argument("--reject", default="0,5,10,20,30", help="rejected gallery percentages")
    p.add_argument("--random-seeds", type=int, default=5, help="random-rejection baseline repeats (0 = off)")

    p = sub.add_parser("upgrade", help="does a new query model still work on the old model's gallery?")
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    common(p, "test")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed R@1 drop in points (default 0)")
    p.add_argument("--old-size", type=int, help="input size of the old (gallery) model, e.g. 224")
    p.add_argument("--new-size", type=int, help="input size of the new (query) model, e.g. 128: with the same "
                   "checkpoint as --old, 128 px queries against a gallery it embedded at 224 px")

    p = sub.add_parser("teacher", help="student -> teacher-gallery R@1 for distilled students")
    p.add_argument("--student", required=True, nargs="+")
    p.add_argument("--teacher", required=True)
    p.add_argument("--teacher-size", type=int)
    common(p, "test")
    return parser


def _emit(args, name: str, result: dict, text: str) -> None:
    """Print the Markdown; with ``--out``, also write ``NAME.json`` and ``NAME.md`` there."""
    print(text)
    if args.out:
        out = Path(args.out)
        write_json(out / f"{name}.json", result)
        write_markdown(out / f"{name}.md", text + "\n")


SIZE_FLAGS = ("size", "query_size", "gallery_size", "teacher_size", "old_size", "new_size")


def check_options(args) -> None:
    """Numbers no subcommand can use, and an --out that cannot be written, are refused before any work (a zero
    size or thread count would otherwise silently mean "the default")."""
    for name in SIZE_FLAGS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise MobileKDError(f"--{name.replace('_', '-')} must be a positive pixel count, got {value}")
    if getattr(args, "batch_size", 1) < 1:
        raise MobileKDError(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "random_seeds", 0) < 0:
        raise MobileKDError(f"--random-seeds must be >= 0 (0 = off), got {args.random_seeds}")
    if args.threads < 0:
        raise MobileKDError(f"--threads must be >= 1 (or 0: torch's choice), got {args.threads}")
    if args.out:
        (check_writable_file if args.command == "embed" else check_writable_dir)(args.out)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    threads = args.threads or None
    if threads:
        torch.set_num_threads(threads)
    if args.command == "embed":
        if not args.out:
            raise MobileKDError("embed needs --out FILE.npz")
        images = load_split(args.data, args.split, args.layout)
        emb = embed_model(args.model, images, args.size, threads, args.batch_size, args.progress)
        write_embedding_file(args.out, emb, {"data": args.data, "split": args.split, "size": args.size})
        print(f"{args.out}: {len(emb.keys)} images x {emb.dim}")
    elif args.command == "fit":
        config = FitConfig(args.head, args.hidden, args.epochs, args.batch_size, args.lr, args.weight_decay,
                           args.kl_weight, args.temperature, seed=args.seed)
        out = args.out or "runs/compat"
        manifest = fit(args.query, args.gallery, args.data, out, config, args.split, args.query_size,
                       args.gallery_size, threads, args.layout, args.progress)
        print(format_fit(manifest).rstrip())
        print(f"transformations: {out}/ ({MANIFEST} + one .safetensors/.json per gallery model)")
    elif args.command == "evaluate":
        result = evaluate(args.transforms, args.data, args.split, args.query, args.gallery, _fractions(args.reject),
                          threads, args.layout, args.random_seeds, args.progress)
        _emit(args, "evaluate", result, format_evaluation(result))
    elif args.command == "upgrade":
        result = upgrade_check(args.old, args.new, args.data, args.split, args.tolerance, args.old_size,
                               args.new_size, threads, args.layout, args.progress)
        _emit(args, "upgrade", result, format_upgrade(result))
    elif args.command == "teacher":
        result = teacher_check(args.student, args.teacher, args.data, args.split, args.teacher_size, threads,
                               args.layout, args.progress)
        _emit(args, "teacher", result, format_teacher(result))
    return 0

"""``python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR``: import a ``.tflite`` classifier."""

from __future__ import annotations

import argparse
import json
import os

import torch

from mobilekd.errors import ModelError, cli_entry
from mobilekd.io import check_writable_dir, check_writable_file
from mobilekd.models.checkpoint import save_model
from mobilekd.weights.from_file import import_tflite, save_backbone


def main(argv=None) -> int:
    """``python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR``: a mobilekd checkpoint with the
    ImageNet weights of Google's MobileNet classifier file, self-checked against the LiteRT interpreter."""
    parser = argparse.ArgumentParser(prog="python -m mobilekd.weights", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="import a .tflite ImageNet classifier into a student checkpoint")
    command.add_argument("file", help="the .tflite classifier (e.g. mobilenet_v1_0.25_224.tflite)")
    command.add_argument("--arch", required=True,
                         help="mobilenetv1_025 | mobilenetv1_050 | mobilenetv1_075 | mobilenetv2_100 (or tf_ names)")
    command.add_argument("--out", required=True, help="checkpoint folder to write (model.json + model.safetensors)")
    command.add_argument("--data", help="check on this data set's images (default: scikit-image's sample photos)")
    command.add_argument("--embed-dim", type=int, default=0, help="new embedding head of this size (0 = pooled features)")
    command.add_argument("--head-bn", action="store_true", help="BatchNorm1d after the new head")
    command.add_argument("--size", type=int, help="input size of the checkpoint (default: the file's)")
    command.add_argument("--safetensors", help="also write the backbone alone to this .safetensors file")
    command.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")

    @cli_entry
    def run(args) -> int:
        if args.embed_dim < 0:
            raise ModelError("--embed-dim must be >= 0")
        if args.threads < 1:
            raise ModelError(f"--threads must be >= 1, got {args.threads}")
        check_writable_dir(args.out)  # an existing file, a read-only disk: refused before the import's work
        if args.safetensors:
            check_writable_file(args.safetensors, "--safetensors")
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)  # a new head is initialised the same way every time
        model, metadata = import_tflite(args.file, args.arch, args.embed_dim, args.size, args.head_bn, args.data,
                                        args.threads)
        metadata["source"]["path"] = os.path.abspath(args.file)
        save_model(model, args.out, metadata)
        if args.safetensors:
            save_backbone(model, args.safetensors)
        print(f"imported {args.file} into {model.spec.arch} ({model.embed_dim}-d embeddings): {args.out}")
        print("self-check vs the LiteRT interpreter: " + json.dumps(metadata["self_check"]))
        return 0

    return run(parser.parse_args(argv))

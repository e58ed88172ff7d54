"""Parity of any exported file on demand:
``python -m export.check FILE --against CKPT [--teacher T] [--data DATA] [--write]``.

FILE is a model file (``model.onnx`` / ``model.tflite`` / ``model.mlpackage``) or its export folder; the
``model.json`` beside it says how to feed it. The file is embedded through its runtime and compared with the
float student CKPT (and the teacher) by the same core the exporters use (``export.parity``), with the gates
of its precision (overridable). Also verified: the file's sha256 against model.json (a file changed after
export fails), and the source checkpoint's sha256 recorded in model.json against CKPT's ``model.safetensors``
(a file exported from another checkpoint fails unless ``--allow-other-source``: its parity against CKPT
measures two different models), and model.json itself: the Android reader's schema (``ModelContract.from_dict``)
and the file's own input/output names and shapes (a model.json that lies about its file is bad input, exit 2).
Where the file's runtime cannot run here (Core ML off macOS) the verdict is
structure only and says so. ``--write`` stores the new report in model.json. Exit 0 = pass, 1 = gate failed,
2 = bad input.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from export.common import (GATE_FAILED, ExportArgumentParser, add_parity_options, check_parity_options,
                           gates_from_args, load_parity, load_student, path_size)
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import sha256_file, write_json
from mobilekd.preprocess import Preprocess
from mobilekd.runtime.contract import ModelContract, file_disagreements
from mobilekd.runtime.runners import runtimes_for


def source_check(contract: ModelContract, against: Path) -> dict:
    """Whether the file was exported from ``against``: the sha256 of its ``model.safetensors`` next to the one
    the exporter recorded in model.json ``source.sha256`` (``matches`` None when model.json records none)."""
    recorded = (contract.source or {}).get("sha256")
    actual = sha256_file(against / "model.safetensors")
    return {"recorded_sha256": recorded, "against_sha256": actual, "against": str(against),
            "matches": None if not recorded else recorded == actual}


def source_failure(source: dict, model_file: Path) -> str | None:
    """The plain failure message when ``source_check`` cannot confirm the file came from --against."""
    if source["matches"]:
        return None
    if source["matches"] is None:
        return (f"model.json of {model_file.name} records no source checkpoint sha256: cannot confirm it was "
                f"exported from {source['against']}")
    return (f"{model_file.name} was exported from another checkpoint: model.json records source sha256 "
            f"{source['recorded_sha256'][:12]}..., {source['against']}/model.safetensors is "
            f"{source['against_sha256'][:12]}...")


def locate(file: str) -> tuple[Path, Path]:
    """(model file, model.json) for a model file or an export folder."""
    path = Path(file)
    if not path.exists():
        raise MobileKDError(f"exported file not found: {path}")
    manifest = path / "model.json" if path.is_dir() and not path.name.endswith(".mlpackage") else \
        path.parent / "model.json"
    if not manifest.is_file():
        raise MobileKDError(f"no model.json beside {path}: export.check needs the contract written by the exporter")
    try:
        contract = ModelContract.from_dict(json.loads(manifest.read_text()))
    except json.JSONDecodeError as error:
        raise MobileKDError(f"{manifest} is not valid JSON: {error}") from None
    model_file = manifest.parent / contract.model_file
    if not model_file.exists():
        raise MobileKDError(f"{manifest} names {contract.model_file}, which does not exist")
    return model_file, manifest


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from export.parity import compute_parity, embed_torch, format_report

    parser = ExportArgumentParser(prog="python -m export.check", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="exported model file or its folder (with model.json)")
    parser.add_argument("--against", required=True, help="the float student checkpoint it was exported from")
    parser.add_argument("--write", action="store_true", help="store the report in model.json")
    parser.add_argument("--allow-other-source", action="store_true",
                        help="compare with --against even when it is not the checkpoint model.json says the file "
                             "was exported from (the difference is still reported)")
    add_parity_options(parser)
    args = parser.parse_args(argv)
    check_parity_options(args)

    model_file, manifest = locate(args.file)
    contract = ModelContract.from_dict(json.loads(manifest.read_text()))
    runtime = runtimes_for(model_file)[0]
    model, meta = load_student(args.against, contract.preprocess.size, args.threads)
    if int(model.embed_dim) != contract.embed_dim:
        raise MobileKDError(f"{args.against} embeds to {model.embed_dim} dims but {model_file.name} to "
                            f"{contract.embed_dim}: not the checkpoint it was exported from")
    # A file may fold another input normalisation into its graph (tflite: per-channel mean/std -> one scalar
    # for MediaPipe); the float model keeps its own, the runner converts. Other differences: the file's wins.
    own = model.preprocess
    file_pre = Preprocess(contract.preprocess.size, own.mean, own.std, contract.preprocess.crop,
                          contract.preprocess.interpolation, contract.preprocess.channels)
    if file_pre != own:
        print(f"warning: the file's preprocess {contract.preprocess} differs from the checkpoint's "
              f"{own}; using the file's")
        model.spec.preprocess = file_pre
    gates = gates_from_args(args, contract.precision)

    unavailable = runtime.why_unavailable()
    structural_check = importlib.import_module(f"export.{contract.runtime}").FORMAT.structural_check
    if unavailable and structural_check is None:
        raise MobileKDError(f"cannot measure parity of {model_file.name}: {unavailable}")
    if unavailable:
        report = structural_check(model_file, contract)
    else:  # fed the float model's pixels; the runner converts them where the file folds another normalisation
        runner = runtime.open(model_file, contract, args.threads, pixels=model.preprocess)
        problems = file_disagreements(contract, *runner.file_tensors())
        if problems:
            raise MobileKDError(f"{manifest} does not describe {model_file.name}: {'; '.join(problems)}")
        data = load_parity(args, model, Path(args.against), meta)
        report = compute_parity(runner, model, data, gates, embed_torch(model, data.pixels))
    digest = sha256_file(model_file)
    if contract.model_sha256 and digest != contract.model_sha256:
        report["passed"] = False
        report.setdefault("failures", []).append(f"{model_file.name} sha256 {digest[:12]}... differs from "
                                                 f"model.json's {contract.model_sha256[:12]}...: changed after export")
    report["source"] = source = source_check(contract, Path(args.against))
    mismatch = source_failure(source, model_file)
    if mismatch and not args.allow_other_source:
        mismatch += " (--allow-other-source to compare them anyway)"
        report["passed"] = False
        report.setdefault("failures", []).append(mismatch)
    elif mismatch:
        mismatch += "; compared anyway (--allow-other-source)"
        source["note"] = mismatch
    report["file_bytes"] = path_size(model_file)
    print(format_report(report, f"{contract.runtime} {contract.precision}: {model_file}"))
    if mismatch:
        print(f"{'warning' if args.allow_other_source else 'error'}: {mismatch}", file=sys.stderr)
    if args.write:
        contract.parity = report
        write_json(manifest, contract.to_dict())
    return 0 if report["passed"] else GATE_FAILED


if __name__ == "__main__":
    raise SystemExit(main())

"""Where does int8 lose a student's embedding fidelity? ai-edge-quantizer recipes side by side, and the
per-layer sensitivity of int8 weights measured in PyTorch.

    python -m benchmarks.int8_sensitivity CKPT [--data DATA] [--parity-images 300] [--calib-images 128] \\
        [--results benchmarks/results/int8_cub/int8_sensitivity]

1. TFLite recipes on the same float file (``export.tflite.export_fp32``) and the same calibration images:
   ``weight_only_wi8_afp32`` (int8 weights, float compute), ``dynamic_wi8_afp32``, ``static_wi8_ai8`` with the
   min-max and the MSE algorithm, ``static_wi8_ai8`` with the first 1 / 2 / 3 convolutions kept float
   (``export.tflite --float-convs N``), and ``static_wi8_ai16`` (int16 activations). Static recipes are calibrated like ``export.tflite``
   (global min/max, ``calibrate_min_max``); ``:moving_average`` uses ai-edge-quantizer's own ``calibrate()``
   for comparison. Each: mean / min cosine to the float student and Recall@1, through the LiteRT interpreter.
2. PyTorch simulation: BatchNorm folded into the convolutions, then symmetric int8 weights (per output
   channel, and per tensor) for the whole network, and for one layer at a time -- the layers whose int8
   weights alone cost the most cosine.

3. The float student's own sensitivity: its mean cosine to itself when every input value is moved by the
   rounding error of an int8 input tensor (uniform noise of one int8 step over the calibration range), and by
   the rounding of 8-bit pixels (one grey level). A checkpoint that already loses the 0.99 gate here cannot
   pass it as a full-integer file whatever the converter does.

If (1)'s weight-only row is already far from 1 and (2) reproduces it, the loss is the network's own
sensitivity to int8 weights (no calibration or tool choice can remove it; quantization-aware training can).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks import write_result
from export.rounding import fold_batchnorm
from mobilekd.errors import MobileKDError, cli_entry

RECIPES = ("weight_only_wi8_afp32", "dynamic_wi8_afp32", "static_wi8_ai8", "static_wi8_ai8:moving_average",
           "static_wi8_ai8:MSE", "static_wi8_ai8:float_convs=1", "static_wi8_ai8:float_convs=2",
           "static_wi8_ai8:float_convs=3", "static_wi8_ai16")


def recall_at_1(embeddings: np.ndarray, labels: np.ndarray) -> float:
    from mobilekd.metrics import retrieval_metrics

    return float(retrieval_metrics(embeddings, labels)["R@1"])


def quantized_tflite(fp32: Path, dst: Path, name: str, calib: list[np.ndarray]) -> Path:
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.recipe_manager import AlgorithmName

    from export.tflite import calibrate_min_max, graph_ops, keep_float, leading_ops, signature_input

    base, _, variant = name.partition(":")
    qt = quantizer.Quantizer(str(fp32))
    algorithm = AlgorithmName.MSE if variant == "MSE" else AlgorithmName.MIN_MAX_UNIFORM_QUANT
    qt.load_quantization_recipe(recipe.static_wi8_ai8(algorithm) if base == "static_wi8_ai8"
                                else getattr(recipe, base)())
    if base.startswith("static"):  # float32 I/O, as export.tflite writes int8 files by default
        for boundary in ("INPUT", "OUTPUT"):
            qt.update_quantization_recipe(regex=".*", operation_name=boundary, algorithm_key=AlgorithmName.NO_QUANTIZE)
    if variant.startswith("float_convs="):  # what export.tflite --float-convs N keeps float
        keep_float(qt, leading_ops(graph_ops(fp32), int(variant.partition("=")[2])))
    calibration = None
    if base.startswith("static") and variant == "moving_average":
        key, input_name = signature_input(fp32)
        calibration = qt.calibrate({key: [{input_name: x} for x in calib]})
    elif base.startswith("static"):
        calibration = calibrate_min_max(qt, fp32, calib)
    with contextlib.redirect_stdout(io.StringIO()):
        result = qt.quantize(calibration)
    result.export_model(str(dst), overwrite=True)
    return dst


@contextlib.contextmanager
def int8_activations(folded: torch.nn.Module, calib: torch.Tensor):
    """Within the block, every BatchNorm(+activation) output of ``folded`` is rounded to asymmetric per-tensor
    int8 over its global min/max on ``calib`` (what ``export.tflite`` calibrates): a PyTorch model of the static
    int8 activations, without any converter."""
    norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ranges: dict = {}

    def record(module, _, out):
        low, high = ranges.get(module, (0.0, 0.0))
        ranges[module] = (min(low, float(out.min())), max(high, float(out.max())))

    def fake_quant(module, _, out):
        low, high = ranges[module]
        scale = max(high - low, 1e-12) / 255
        zero = round(-low / scale)
        return (torch.clamp(torch.round(out / scale) + zero, 0, 255) - zero) * scale

    hooks = [m.register_forward_hook(record) for m in norms]
    with torch.no_grad():
        folded(calib)
    for hook in hooks:
        hook.remove()
    hooks = [m.register_forward_hook(fake_quant) for m in norms]
    try:
        yield folded
    finally:
        for hook in hooks:
            hook.remove()


def int8_weights(module: torch.nn.Module, per_channel: bool = True) -> None:
    """Round ``module.weight`` to symmetric int8 (scale max|w| / 127, per output channel or per tensor) --
    what ai-edge-quantizer's and ONNX Runtime's min-max weight quantization store."""
    weight = module.weight.data
    absmax = weight.abs().flatten(1).amax(1).view(-1, *[1] * (weight.dim() - 1)) if per_channel else weight.abs().max()
    scale = absmax.clamp_min(1e-12) / 127
    module.weight.data = torch.round(weight / scale).clamp(-127, 127) * scale


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_sensitivity", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="parity data (default: the checkpoint's config.data)")
    parser.add_argument("--parity-images", type=int, default=300)
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--top", type=int, default=6, help="most sensitive layers to list")
    parser.add_argument("--results", default="benchmarks/results/int8_cub/int8_sensitivity")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe
    from export.common import ExportJob, load_student
    from export.parity import calibration_images, embed_torch, load_parity_data, resolve_data_path
    from export.tflite import export_fp32
    from mobilekd.runtime.runners import open_runtime, to_layout

    model, meta = load_student(args.checkpoint, None, 1)
    config = meta.get("config") or {}
    train_data = resolve_data_path(config.get("data"), Path(args.checkpoint))
    data = args.data or train_data
    if not data:
        raise MobileKDError("no data: pass --data")
    parity = load_parity_data(data, model.preprocess, args.parity_images)
    if parity.labels is None:
        raise MobileKDError(f"{data} has no labels: Recall@1 needs a labelled test split")
    reference = embed_torch(model, parity.pixels)
    calib, _ = calibration_images(model.preprocess, args.calib_images, None, train_data or data,
                                  float(config.get("train_fraction", 0.5)), 0)
    calib_nchw = torch.from_numpy(calib)
    calib = [to_layout(calib[i:i + 1], "NHWC") for i in range(len(calib))]
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="mobilekd-int8-"))
    fp32 = work / "fp32.tflite"
    export_fp32(ExportJob(Path(args.checkpoint), model, meta, "fp32", "NHWC", work), fp32)

    def run_tflite(path: Path) -> np.ndarray:  # no model.json: NHWC float32 I/O read from the file itself
        return open_runtime(path, threads=1, preprocess=model.preprocess)(parity.pixels)

    def row(embeddings: np.ndarray) -> dict:
        cos = np.sum(embeddings * reference, axis=1)
        return {"mean_cos": round(float(cos.mean()), 6), "min_cos": round(float(cos.min()), 4),
                "r1": round(recall_at_1(embeddings, parity.labels), 2)}

    results = {"float": {"r1": round(recall_at_1(reference, parity.labels), 2)}, "tflite": {}, "torch": {}}
    for name in RECIPES:
        print(f"== tflite {name}", flush=True)
        results["tflite"][name] = row(run_tflite(quantized_tflite(fp32, work / "q.tflite", name, calib)))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.from_numpy(parity.pixels)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    steps = {"int8 input rounding": float(calib_nchw.max() - calib_nchw.min()) / 255, "one grey level": 1.0 / std}
    for label, step in steps.items():
        noise = (torch.rand(pixels.shape, generator=generator) - 0.5) * step
        results["torch"][f"float student, input noise = {label}"] = row(embed_torch(model, (pixels + noise).numpy()))
    folded = fold_batchnorm(model)
    for per_channel in (True, False):
        sim = copy.deepcopy(folded)
        for module in sim.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                int8_weights(module, per_channel)
        results["torch"][f"int8 weights {'per channel' if per_channel else 'per tensor'}"] = \
            row(embed_torch(sim, parity.pixels))
        if per_channel:
            with int8_activations(sim, calib_nchw):
                results["torch"]["int8 weights per channel + int8 activations"] = row(embed_torch(sim, parity.pixels))
            with int8_activations(copy.deepcopy(folded), calib_nchw) as acts_only:
                results["torch"]["int8 activations only"] = row(embed_torch(acts_only, parity.pixels))
    layers = []
    for name, module in folded.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            sim = copy.deepcopy(folded)
            int8_weights(sim.get_submodule(name))
            cos = float(np.sum(embed_torch(sim, parity.pixels) * reference, axis=1).mean())
            layers.append({"layer": name, "shape": list(module.weight.shape), "cos_loss": round(1 - cos, 6)})
    layers.sort(key=lambda r: -r["cos_loss"])
    results["layers"] = layers

    lines = [f"# int8 sensitivity: {Path(args.checkpoint).name}\n",
             f"Command: `python -m benchmarks.int8_sensitivity {' '.join(argv if argv is not None else sys.argv[1:])}`\n",
             f"{len(parity.pixels)} held-out images of `{data}`; float student R@1 {results['float']['r1']:.2f}; "
             f"{len(calib)} calibration images.\n", "| route | mean cos | min cos | R@1 |", "|---|---|---|---|"]
    for group in ("tflite", "torch"):
        for name, r in results[group].items():
            lines.append(f"| {group} {name} | {r['mean_cos']:.5f} | {r['min_cos']:.4f} | {r['r1']:.2f} |")
    total = sum(r["cos_loss"] for r in layers)
    lines += ["", f"int8 weights (per channel) in ONE layer at a time, PyTorch, BN folded -- the {args.top} costliest "
              f"of {len(layers)} (sum of all single-layer losses: {total:.5f}):", "",
              "| layer | weight shape | 1 - mean cos |", "|---|---|---|"]
    lines += [f"| {r['layer']} | {r['shape']} | {r['cos_loss']:.5f} |" for r in layers[:args.top]]
    text = "\n".join(lines) + "\n"
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".md").write_text(text)
    write_result(args.results + ".json", {"machine": describe(), "checkpoint": args.checkpoint, **results})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

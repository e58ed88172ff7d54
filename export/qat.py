"""Quantization-aware fine-tuning for int8 export:
``python -m export.qat CKPT --out QAT_CKPT [--epochs 6] [--lr 1e-4] [--images 0]``, then
``python -m export.tflite QAT_CKPT --quantize int8`` (or ``export.onnx``).

Why: a width-0.25 MobileNet is so sensitive to int8 that post-training quantization fails the 0.99 cosine
gate -- int8 *weights alone* cost mean cosine 0.9925 on the CUB student (benchmarks/results/
int8_sensitivity_cub.md). Here the student learns to be quantized, with the float student as its only teacher
(no labels; Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, with a distillation target instead of the task loss):

1. BatchNorm's scale is folded into the convolutions (``fold_batchnorm``), so the weights trained are the
   weights the converters quantize; each BatchNorm keeps only a bias (and its activation).
2. Every conv/linear weight goes through symmetric per-output-channel int8 fake quantization (straight-through
   gradients; scale = max|w| / 127, what ai-edge-quantizer's and ONNX Runtime's min-max use), and the model
   input, every activation and the head output through per-tensor int8 fake quantization
   (``torch.ao.quantization.FakeQuantize``, moving-average min/max, observers frozen after the first epoch).
3. Loss: ``mean(1 - cos(f_q(x), f(x)))`` against the float student ``f`` on the training split's evaluation
   views and their mirror images, AdamW, cosine schedule.

The result is an ordinary mobilekd checkpoint (same architecture, weights exactly on the int8 grid, identity
BatchNorms) whose ``model.json`` records ``qat`` (epochs, final loss, fidelity to the original float student on
the test split). Its exports are gated against it; ``python -m export.check FILE --against ORIGINAL`` measures
the file against the original student. A killed run resumes from ``OUT.qat-state.pt``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mobilekd.errors import MobileKDError, cli_entry

QUANTIZED = (torch.nn.Conv2d, torch.nn.Linear)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with every Conv2d that is directly followed by a BatchNorm2d (among its parent's children, timm's
    order) carrying that BatchNorm's scale in its weights. The BatchNorm keeps only the folded bias (weight 1,
    mean 0, variance 1 - eps) and its activation (timm's BatchNormAct2d), so the architecture -- and a saved
    checkpoint's keys -- stay the same, and the converters fold the rest away as before."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (_, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and bn.affine:
                fused = fuse_conv_bn_eval(conv, bn)
                conv.weight.data.copy_(fused.weight.data)
                if conv.bias is not None:
                    conv.bias.data.zero_()
                bn.bias.data.copy_(fused.bias.data)
                bn.weight.data.fill_(1.0), bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps)
    return model


def int8_channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 scale: max|w| / 127 over all but the first dimension."""
    return (weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / 127).float()


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to its own per-channel int8 grid (straight-through gradient)."""
    scale = int8_channel_scale(weight)
    zero = torch.zeros(len(scale), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class _ChannelInt8(torch.nn.Module):
    def forward(self, weight):
        return quantize_weight(weight)


def _activation_quantizer():
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                        qscheme=torch.per_tensor_affine)


class QuantAware(torch.nn.Module):
    """``model`` (BN folded) with fake-quantized weights, input, activations and head output. ``strip()``
    returns the plain model with the quantized weights baked in."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.input_quant = _activation_quantizer()
        self._wrapped: list[tuple[torch.nn.Module, str]] = []
        for module in list(model.modules()):
            if isinstance(module, QUANTIZED):
                parametrize.register_parametrization(module, "weight", _ChannelInt8())
            act = getattr(module, "act", None)
            if isinstance(module, torch.nn.BatchNorm2d) and isinstance(act, torch.nn.Module) \
                    and not isinstance(act, torch.nn.Identity):
                module.act = torch.nn.Sequential(act, _activation_quantizer())
                self._wrapped.append((module, "act"))
        if hasattr(model, "head"):
            # the pooled features (TFLite MEAN output) and the head output are int8 tensors too
            model.head = torch.nn.Sequential(_activation_quantizer(), model.head, _activation_quantizer())
            self._wrapped.append((model, "head"))

    def forward(self, x):
        return self.model(self.input_quant(x))

    def freeze_observers(self) -> None:
        for module in self.modules():
            if hasattr(module, "disable_observer"):
                module.disable_observer()

    def strip(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        for module in model.modules():
            for name in ("act", "head"):
                wrapped = getattr(module, name, None)
                if isinstance(wrapped, torch.nn.Sequential) and \
                        any(type(m).__name__ == "FakeQuantize" for m in wrapped):
                    kept = [m for m in wrapped if type(m).__name__ != "FakeQuantize"]
                    setattr(module, name, kept[0])
        return model.eval()


def _cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean()


def fidelity(reference: np.ndarray, other: np.ndarray, labels) -> dict:
    from export.parity import _cosines, _r1

    cos = _cosines(reference, other)
    out = {"mean_cos": round(float(cos.mean()), 6), "min_cos": round(float(cos.min()), 4)}
    if labels is not None:
        out.update(r1_float=round(_r1(reference, labels), 2), r1_qat=round(_r1(other, labels), 2))
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from export.common import ExportArgumentParser, load_student, read_checkpoint_meta
    from export.parity import choose_images, embed_torch, load_parity_data, render_images, resolve_data_path
    from mobilekd.models import save_model

    parser = ExportArgumentParser(prog="python -m export.qat", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="float student checkpoint folder")
    parser.add_argument("--out", required=True, help="folder for the quantization-aware checkpoint")
    parser.add_argument("--data", help="training images (default: the training split of the checkpoint's config.data)")
    parser.add_argument("--images", type=int, default=0, help="at most this many training images (0 = all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--parity-images", type=int, default=1000,
                        help="test-split images for the fidelity report (0 = all)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.lr <= 0 or args.batch_size < 2 or args.images < 0:
        raise MobileKDError("--epochs must be >= 1, --lr > 0, --batch-size >= 2 and --images >= 0")
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if out.resolve() == checkpoint.resolve():
        raise MobileKDError("--out must differ from the checkpoint: QAT writes a new checkpoint")
    if out.exists() and any(out.iterdir()) and not (out / "model.json").is_file():
        raise MobileKDError(f"--out {out} is a non-empty folder that is not a checkpoint; refusing to replace it")
    student, meta = load_student(str(checkpoint), None, args.threads or torch.get_num_threads())
    torch.manual_seed(args.seed)
    config = meta.get("config") or {}
    train_data = args.data or resolve_data_path(config.get("data"), checkpoint)
    if not train_data:
        raise MobileKDError(f"no training images: {checkpoint / 'model.json'} names no config.data; pass --data")
    train_fraction = float(config.get("train_fraction", 0.5))
    from mobilekd.data.datasets import load_image_set

    images = load_image_set(train_data, "train", train_fraction=train_fraction, min_per_class=1)
    if args.images:
        images = choose_images(images, min(args.images, len(images)), args.seed, whole_classes=False)
    pixels = render_images(images, student.preprocess)
    x = torch.from_numpy(np.concatenate([pixels, pixels[:, :, :, ::-1]]).copy())  # + mirror images
    print(f"qat {checkpoint}: {len(x)} training views ({train_data}, train split), {args.epochs} epochs", flush=True)
    with torch.no_grad():
        target = torch.cat([student(x[i:i + 256]) for i in range(0, len(x), 256)])

    qat = QuantAware(fold_batchnorm(student)).eval()  # eval: the identity BNs must not use batch statistics
    optimizer = torch.optim.AdamW([p for p in qat.parameters() if p.requires_grad], lr=args.lr, weight_decay=0)
    steps_per_epoch = math.ceil(len(x) / args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / (args.epochs * steps_per_epoch))))
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".qat-state.pt")
    start, history = 0, []
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state.get("args") == {k: v for k, v in vars(args).items() if k != "threads"}:
            if state["epoch"] >= 1:
                qat.freeze_observers()
            qat.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            start, history = state["epoch"], state["history"]
            print(f"resuming from {state_path} at epoch {start}", flush=True)
    from tqdm import tqdm

    for epoch in range(start, args.epochs):
        if epoch == 1:
            qat.freeze_observers()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch))
        total = 0.0
        for i in tqdm(range(0, len(x), args.batch_size), desc=f"qat epoch {epoch + 1}/{args.epochs}", leave=False):
            index = order[i:i + args.batch_size]
            loss = _cosine_loss(qat(x[index]), target[index])
            if not torch.isfinite(loss):
                raise MobileKDError(f"QAT loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        history.append(round(total / len(x), 6))
        print(f"qat epoch {epoch + 1}: 1 - cos {history[-1]:.5f}", flush=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"epoch": epoch + 1, "model": qat.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "history": history,
                    "args": {k: v for k, v in vars(args).items() if k != "threads"}}, tmp)
        os.replace(tmp, state_path)

    result = qat.strip()
    result.spec = student.spec
    parity = load_parity_data(resolve_data_path(config.get("data"), checkpoint) or train_data, student.preprocess,
                              args.parity_images, "test", train_fraction)
    report = fidelity(embed_torch(student, parity.pixels), embed_torch(result, parity.pixels), parity.labels)
    print(f"QAT float vs original on {len(parity.pixels)} test images: mean cos {report['mean_cos']:.6f}"
          + (f", R@1 {report['r1_float']:.2f} -> {report['r1_qat']:.2f}" if "r1_qat" in report else ""), flush=True)
    extra = {k: v for k, v in meta.items() if k not in ("format", "spec", "embed_dim")}
    extra["qat"] = {"source": str(checkpoint.resolve()), "epochs": args.epochs, "lr": args.lr,
                    "train_views": len(x), "loss_history": history, "vs_original_test": report,
                    "weights": "on the symmetric per-channel int8 grid; BatchNorm folded into the convolutions"}
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(result, work, extra)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    read_checkpoint_meta(out)  # the written checkpoint reads back
    print(f"wrote {out} (export it: python -m export.tflite {out} --quantize int8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

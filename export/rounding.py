"""Round a student's weights to the int8 grid the way that costs its outputs least, before a quantizer stores them.

Why: a quantizer stores every weight as round-to-nearest of ``w / s`` (symmetric int8, ``s = max|w| / 127`` per
output channel: ai-edge-quantizer's ``static_wi8_ai8`` and ONNX Runtime's per-channel weights). Rounding each
weight to its nearest level is not what keeps the layer's *output*: an output channel's error is ``e . x`` for
the rounding errors ``e`` of its weights and an input patch ``x``, so its mean square is ``e^T M e`` with
``M = E[x x^T]`` over real inputs (AdaRound's objective: Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020). Measured on an ImageNet MobileNetV1-0.25 fine-tuned on CUB
(``benchmarks/results/int8_cub/rounding.md``): nearly all of its int8 loss came from one depthwise layer whose
edge-detector kernels (weights up to 6 that sum to 0.01) lose their zero sum to nearest rounding, so a flat
image region -- most of a photo -- gets a response it never had in float.

How: BatchNorm is folded into the convolutions first (``fold_batchnorm``: the converters fold it too, so the
grid is the one of the folded weights), ``M`` is measured per output channel on the calibration images, and
each channel picks, for every weight, the level below or above ``w / s``:

* up to ``EXHAUSTIVE_MAX`` weights per channel (a 3x3 depthwise kernel: 9, so 512 patterns): the exact best;
* more (the stem, pointwise convolutions): greedy flips from round-to-nearest while the error falls.

The largest weight of each channel stays at +-127, so the quantizer derives the same scale and re-rounds the
snapped weights onto the same integers: the int8 file stores this rounding, with no quantizer option. The
float model returned computes a slightly different function; parity is still measured against the original
float student.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

EXHAUSTIVE_MAX = 10  # weights per output channel up to which every floor/ceil pattern is tried (2^10 = 1024)
GREEDY_SWEEPS = 8  # passes of single-weight flips over a larger channel


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


def input_moments(model: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` of each convolution's input patches, per output channel's receptive field: for a conv of
    ``groups`` groups, ``[out_channels, n, n]`` with ``n = in_channels / groups * kh * kw`` (the weights of one
    output channel, flattened in ``weight[o].flatten()`` order), over every position of ``images``."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(module: torch.nn.Conv2d, inputs, _):
            x = inputs[0].double()
            pad = module.padding if isinstance(module.padding, tuple) else (0, 0)
            patches = F.unfold(x, module.kernel_size, module.dilation, pad, module.stride)  # [B, Cin*k*k, L]
            per_group = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            patches = patches.view(x.shape[0], module.groups, per_group, -1)
            moment = torch.einsum("bgil,bgjl->gij", patches, patches)  # [groups, n, n]
            sums[name] = sums.get(name, 0) + moment
            counts[name] = counts.get(name, 0) + patches.shape[0] * patches.shape[-1]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in convs.items()]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                model(images[start:start + batch])
    finally:
        for handle in handles:
            handle.remove()
    moments = {}
    for name, module in convs.items():
        if name in sums:
            per_group = sums[name] / counts[name]
            moments[name] = per_group.repeat_interleave(module.out_channels // module.groups, dim=0)
    return moments


def best_rounding(units: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """Integer levels ``q`` (each ``floor`` or ``ceil`` of ``units``, within +-127) minimising ``(q - u)^T M (q - u)``
    per row. ``units``: [C, n] weights over their scale; ``moment``: [C, n, n]."""
    low = torch.floor(units).clamp(-127, 127)
    high = torch.ceil(units).clamp(-127, 127)
    n = units.shape[1]
    if n <= EXHAUSTIVE_MAX:
        bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=units.dtype)  # [P, n]
        candidates = low[:, None, :] + bits[None] * (high - low)[:, None, :]  # [C, P, n]
        error = candidates - units[:, None, :]
        cost = torch.einsum("cpi,cij,cpj->cp", error, moment, error)
        return candidates[torch.arange(len(units)), cost.argmin(1)]
    levels = torch.round(units).clamp(-127, 127)
    error = levels - units
    for _ in range(GREEDY_SWEEPS):
        improved = False
        for i in range(n):
            other = torch.where(levels[:, i] == low[:, i], high[:, i], low[:, i])
            step = other - levels[:, i]
            # cost change of moving weight i by step: 2 step (M e)_i + step^2 M_ii
            change = 2 * step * torch.einsum("cj,cj->c", moment[:, i], error) + step ** 2 * moment[:, i, i]
            better = (change < -1e-12) & (step != 0)
            if better.any():
                improved = True
                levels[better, i] = other[better]
                error[better, i] = levels[better, i] - units[better, i]
        if not improved:
            break
    return levels


def round_for_int8(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.nn.Module, dict]:
    """``model`` with BatchNorm folded and every convolution's weights on the per-channel symmetric int8 grid,
    rounded by ``best_rounding`` under the input moments of ``images`` (the calibration batch, NCHW, already
    normalised as the model expects). Returns the model and, per layer, the output error (``e^T M e`` summed
    over channels) of nearest rounding and of the chosen rounding."""
    folded = fold_batchnorm(model)
    moments = input_moments(folded, images)
    report = {}
    for name, module in folded.named_modules():
        if not isinstance(module, torch.nn.Conv2d) or name not in moments:
            continue
        weight = module.weight.data.double()
        flat = weight.flatten(1)
        scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        units = flat / scale
        units = torch.where(units.abs() > 126.99, units.round(), units)  # the largest weight stays +-127: same scale
        moment = moments[name]
        nearest = torch.round(units).clamp(-127, 127) - units
        levels = best_rounding(units, moment)
        chosen = levels - units
        report[name] = {"nearest": float(torch.einsum("ci,cij,cj->", nearest, moment, nearest * scale ** 2)),
                        "chosen": float(torch.einsum("ci,cij,cj->", chosen, moment, chosen * scale ** 2))}
        module.weight.data = (levels * scale).view_as(weight).to(module.weight.dtype)
    return folded, report


# ------------------------------------------------------------------------------------------ the exporters' option


def add_weight_rounding(parser) -> None:
    """``--weight-rounding``: the int8 option of the formats with calibrated int8 weights (ONNX, TFLite)."""
    parser.add_argument("--weight-rounding", choices=("output", "nearest"), default="output",
                        help="int8: round each weight to the level below or above that keeps its layer's output on "
                             "the calibration images (output, the default: export.rounding; its effect is measured in "
                             "benchmarks/results/int8_cub/) or to the nearest level")


def read_weight_rounding(args, precision: str) -> dict:
    return {"weight_rounding": args.weight_rounding if precision == "int8" else "nearest"}


def file_model(job) -> tuple[torch.nn.Module, str | None]:
    """The model whose float graph an int8 quantizer reads: ``job.model`` itself, or (``--weight-rounding output``,
    the default for int8) its copy with BatchNorm folded and int8-grid weights, with a line for model.json."""
    if job.precision != "int8" or job.options.get("weight_rounding", "output") != "output":
        return job.model, None
    rounded, report = round_for_int8(job.model, torch.from_numpy(job.calib))
    nearest, chosen = (sum(layer[key] for layer in report.values()) for key in ("nearest", "chosen"))
    return rounded, (f"rounded for the least conv output error on the {len(job.calib)} calibration images "
                     f"(export.rounding): summed mean squared output error {chosen:.4g}, {nearest:.4g} rounded to "
                     "nearest")

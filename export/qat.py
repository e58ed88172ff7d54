"""Quantization-aware distillation: ``python -m export.qat RUN --out QAT_RUN [--epochs 2] [--lr 1e-4]``.

A short fine-tuning of a distilled student (a ``mobilekd.distill`` run folder) with the arithmetic of its int8
file simulated in the forward pass, so that the int8 export keeps the float student's neighbours.

Simulated scheme: the one ``export.tflite --quantize int8`` (ai-edge-quantizer ``static_wi8_ai8``) and
``export.onnx --quantize int8`` store -- BatchNorm folded into the convolutions; weights symmetric int8 per
output channel (scale ``max|w| / 127``), starting from the exporter's rounding (``export.rounding``) and
rounded to nearest as they move; activations asymmetric int8 per tensor wherever the
int8 graph stores one (the model input, each convolution's output after its bias and ReLU6, each block's
output, the pooled features), their ranges the global min/max over the exporter's own calibration images
(same images, same rule), measured again after every epoch as the weights move. Rounding passes gradients
straight through.

Loss: the run's own teacher losses (its config and teacher cache) plus ``--anchor-weight`` times the
distance-distribution KL between the simulated-int8 student and the float student it starts from, on the same
batch: the teacher keeps pulling, the anchor keeps the float student's neighbourhoods.

Output: a run folder like any other, whose weights lie on the int8 grid (the quantizers derive the same scales
and integers), so ``export.tflite``/``export.onnx --quantize int8 QAT_RUN`` store exactly the simulated
weights and calibrate the same activation ranges. The source's weights are never modified (its teacher cache
may gain the teacher's test-split embeddings, as any run sharing it does).
"""

from __future__ import annotations

import argparse
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from mobilekd.config import Config
from mobilekd.engine import Trainer
from mobilekd.engine.hooks import EvaluationHook, Hook, HistoryHook, LogHook, SummaryHook
from mobilekd.errors import MobileKDError, ModelError, cli_entry
from mobilekd.io import sha256_file
from mobilekd.losses import get_loss
from mobilekd.losses.distance_kl import DistanceKLLoss
from mobilekd.models import load_model

from export.common import read_checkpoint_meta
from export.parity import calibration_images, resolve_data_path
from export.rounding import round_for_int8

WEIGHT_LEVELS = 127  # symmetric int8 weights: -127..127 (the quantizers' narrow range)


# ------------------------------------------------------------------------------------------ the simulation
class PerChannelInt8(torch.nn.Module):
    """Weight parametrization: symmetric int8 per output channel, scale from the current weights."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / WEIGHT_LEVELS
        zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS)


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric int8 over [low, high] widened to hold 0, as the quantizers do."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, 1e-12)
    return scale, int(min(127, max(-128, round(-128 - low / scale))))


@dataclass
class ActivationPoint:
    """One int8 activation tensor: observes its global min/max, or fake-quantizes with the observed range."""

    name: str
    low: float = float("inf")
    high: float = float("-inf")
    observing: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.low, self.high = min(self.low, x.min().item()), max(self.high, x.max().item())
            return x
        scale, zero = activation_qparams(self.low, self.high)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)


def _is_norm_act(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.BatchNorm2d) and hasattr(module, "act")  # timm's BatchNormAct2d


def _train_with_frozen_batchnorm(self, mode: bool = True):
    """``train()`` of a folded student: BatchNorm stays in eval mode (it is a bias now)."""
    torch.nn.Module.train(self, mode)
    for module in self.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    return self


@dataclass
class Int8Simulation:
    """The int8 arithmetic of an exported file, simulated in place on a (BatchNorm-folded) student."""

    student: torch.nn.Module
    points: dict[str, ActivationPoint] = field(default_factory=dict)
    handles: list = field(default_factory=list)
    layers: list = field(default_factory=list)

    @classmethod
    def attach(cls, student: torch.nn.Module, images: torch.Tensor) -> "Int8Simulation":
        """Start from the exporter's own int8 weights (``export.rounding``: BatchNorm folded, each weight
        rounded for the least output error on ``images``), freeze BatchNorm, and simulate."""
        student.load_state_dict(round_for_int8(student, images)[0].state_dict())
        student.train = types.MethodType(_train_with_frozen_batchnorm, student)
        for module in student.modules():  # BatchNorm is a bias now: its scale stays 1 (folded, on the grid)
            if isinstance(module, torch.nn.BatchNorm2d) and module.weight is not None:
                module.weight.requires_grad_(False)
        sim = cls(student)
        backbone = student.backbone
        outputs = [(n, m) for n, m in backbone.named_modules() if _is_norm_act(m)]
        if not outputs:
            raise ModelError(f"export.qat simulates timm students whose convolutions end in BatchNorm+activation; "
                             f"{student.spec.arch} has none")
        blocks = [(f"blocks.{i}.{j}", block) for i, stage in enumerate(getattr(backbone, "blocks", []))
                  for j, block in enumerate(stage)]
        for name, module in outputs + blocks + [("pool", backbone.global_pool)]:
            sim._quantize_output(name, module)
        sim._quantize_input(backbone)
        for name, module in student.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                parametrize.register_parametrization(module, "weight", PerChannelInt8())
                sim.layers.append(module)
        return sim

    def _quantize_output(self, name: str, module: torch.nn.Module) -> None:
        point = self.points[name] = ActivationPoint(name)
        self.handles.append(module.register_forward_hook(lambda _m, _i, out: point(out)))

    def _quantize_input(self, backbone: torch.nn.Module) -> None:
        point = self.points["input"] = ActivationPoint("input")
        self.handles.append(backbone.register_forward_pre_hook(lambda _m, args: (point(args[0]), *args[1:])))

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch: int = 32) -> None:
        """Global min/max of every activation point on ``images`` (weights on their grid, activations float:
        what the exporter's calibration of the float file sees), then simulate with those ranges."""
        was_training = self.student.training
        self.student.eval()
        for point in self.points.values():
            point.low, point.high, point.observing = float("inf"), float("-inf"), True
        for start in range(0, len(images), batch):
            self.student(images[start:start + batch])
        for point in self.points.values():
            point.observing = False
        self.student.train(was_training)

    def ranges(self) -> dict[str, list[float]]:
        return {name: [round(p.low, 6), round(p.high, 6)] for name, p in self.points.items()}

    def detach(self) -> None:
        """Remove the simulation: the weights stay snapped to their int8 grid, the activations float."""
        for handle in self.handles:
            handle.remove()
        for layer in self.layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        del self.student.train  # back to the class's train()
        self.student.eval()


# ------------------------------------------------------------------------------------------ the anchor
class AnchoredStudent(torch.nn.Module):
    """What the step trains: the simulated student's embeddings; the frozen float student's embeddings of the
    same batch are kept for the anchor loss."""

    def __init__(self, student: torch.nn.Module, float_student: torch.nn.Module):
        super().__init__()
        self.student, self.float_student = student, float_student.eval().requires_grad_(False)
        self.float_embeddings: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, stages=None):
        with torch.no_grad():
            self.float_embeddings = self.float_student(x)
        return self.student(x) if stages is None else self.student(x, stages)


class AnchoredLoss(torch.nn.Module):
    """A teacher loss plus ``weight`` x the distance-distribution KL to the float student's embeddings."""

    def __init__(self, loss: torch.nn.Module, anchor: AnchoredStudent, weight: float, temperature: float):
        super().__init__()
        self.loss, self.weight, self.kl = loss, weight, DistanceKLLoss(temperature)
        self.__dict__["anchor"] = anchor  # not a submodule: the step module already owns it

    def forward(self, embeddings: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        reference = self.anchor.float_embeddings
        return self.loss(embeddings, teacher) + self.weight * self.kl(embeddings[: len(reference)], reference)


class RecalibrateHook(Hook):
    """After each epoch, the activation ranges of the moved weights (before the epoch's evaluation)."""

    def __init__(self, sim: Int8Simulation, images: torch.Tensor):
        self.sim, self.images = sim, images

    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        self.sim.calibrate(self.images)


# ------------------------------------------------------------------------------------------ the run
def qat_config(source: Path, out: str, epochs: int, lr: float, threads: int) -> Config:
    """The source run's config, fine-tuning for ``epochs`` at ``lr`` into ``out``, on the source's teacher
    cache (its targets; the same data, views and seed)."""
    meta = load_model_meta(source)
    values = dict(meta["config"])
    values.update(out=out, epochs=epochs, lr=lr, warmup_epochs=0.0, resume=False, threads=threads, eval_every=1,
                  data=resolve_data_path(values.get("data"), source))
    cache = source / "teacher_cache"
    if cache.is_dir() and not values.get("teacher_cache"):
        values["teacher_cache"] = str(cache)
    return Config.from_dict(values)


def load_model_meta(source: Path) -> dict:
    """The source run's model.json, which must record the config it was trained with."""
    if not (source / "model.json").is_file():
        raise ModelError(f"{source} is not a run folder (no model.json)")
    meta = read_checkpoint_meta(source)
    if not (meta.get("config") or {}).get("teacher"):
        raise ModelError(f"{source}/model.json records no distillation with a teacher: export.qat fine-tunes "
                         "a mobilekd.distill run")
    return meta


def attach_anchor(trainer: Trainer, float_student: torch.nn.Module, weight: float, temperature: float) -> None:
    """Wrap the step's student and every domain's first loss on the teacher's embeddings (the registry's
    ``inputs="embeddings"``) with the float-student anchor."""
    anchor = AnchoredStudent(trainer.student, float_student)
    trainer.step_module.student = anchor
    for name, losses in trainer.losses.items():
        teacher_losses = [key for key in losses.keys() if get_loss(key).inputs == "embeddings"]
        if not teacher_losses:
            raise MobileKDError(f"export.qat needs a run with a teacher loss; domain {name} has {list(losses)}")
        key = teacher_losses[0]
        losses[key] = AnchoredLoss(losses[key], anchor, weight, temperature)


def quantization_aware_distill(source: str | Path, out: str | Path, *, epochs: int = 2, lr: float = 1e-4,
                               anchor_weight: float = 1.0, calib_images: int = 128, threads: int = 1) -> dict:
    """Fine-tune ``source`` (a distill run folder) with int8 simulated into ``out``; the final metrics (of the
    simulated int8 student) and the QAT record."""
    source = Path(source)
    config = qat_config(source, str(out), epochs, lr, threads)
    trainer = Trainer(config, hooks=[])
    float_student = load_model(source).eval()
    trainer.student.load_state_dict(float_student.state_dict())
    trainer.bn_unfolded = None
    images, info = calibration_images(trainer.student.preprocess, calib_images, None, config.data,
                                      config.train_fraction, 0)
    images = torch.from_numpy(images)
    sim = Int8Simulation.attach(trainer.student, images)
    sim.calibrate(images)
    before = trainer.evaluate().get("test")  # the simulated int8 student before fine-tuning (= plain int8)
    attach_anchor(trainer, float_student, anchor_weight, config.kl_temperature)
    trainer.hooks = [RecalibrateHook(sim, images), EvaluationHook(), HistoryHook(), LogHook(), SummaryHook()]
    summary = trainer.run()
    record = {"source": str(source), "sha256": sha256_file(source / "model.safetensors"), "rule": "export.qat",
              "epochs": epochs, "lr": lr, "simulated_before": before, "anchor_weight": anchor_weight, "calibration": info,
              "activation_ranges": sim.ranges(), "scheme": "int8 per-channel symmetric weights, per-tensor "
              "asymmetric activations (global min/max), BatchNorm folded"}
    sim.detach()
    trainer.step_module.student = trainer.student
    trainer.init_from = record
    trainer.save(epochs - 1)
    return {**summary, "qat": record}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.qat", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a mobilekd.distill run folder (model.json + model.safetensors + teacher_cache)")
    parser.add_argument("--out", required=True, help="the new run folder (the source is never modified)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--anchor-weight", type=float, default=1.0,
                        help="weight of the KL to the float student's neighbourhoods (default 1)")
    parser.add_argument("--calib-images", type=int, default=128,
                        help="calibration images, as the exporter's --calib-images (default 128)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.lr <= 0 or args.anchor_weight < 0:
        raise MobileKDError("--epochs must be >= 1, --lr > 0 and --anchor-weight >= 0")
    if Path(args.out).resolve() == Path(args.run).resolve():
        raise MobileKDError("--out must differ from the source run: export.qat never modifies it")
    summary = quantization_aware_distill(args.run, args.out, epochs=args.epochs, lr=args.lr,
                                         anchor_weight=args.anchor_weight, calib_images=args.calib_images,
                                         threads=args.threads)
    test = summary.get("test") or {}
    print(f"{args.out}: simulated int8 R@1 {test.get('R@1', float('nan')):.2f}; export it with "
          f"`python -m export.tflite {args.out} --quantize int8`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One configuration object for ``python -m mobilekd.distill`` / ``mobilekd.train`` and the Python API.

Values come from, in increasing priority: the defaults below, a YAML/JSON file (``--config``), and command
line flags (every field is a flag: ``embed_dim`` -> ``--embed-dim``). ``Config.validate`` turns bad values into
one clear error.

The loss keys (``NAME_weight`` and each loss's options, e.g. ``kl_weight``, ``kl_temperature``) are not written
here: they are generated from the loss registry (:mod:`mobilekd.losses.registry`), and regenerated in place
when a loss is registered later, so ``Config(rkd_angle_weight=2.0)``, ``--rkd-angle-weight`` and the YAML key
``rkd_angle_weight`` exist for every registered loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from mobilekd.errors import MobileKDError
from mobilekd.losses import get_loss, loss_specs
from mobilekd.losses.registry import LossSpec, on_change


PACKAGED_CONFIGS = Path(__file__).parent / "configs"  # recipes shipped with the package, by name for --config
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # --memory-format: the student's tensor layout in training


@dataclass
class Config:
    """Every option of a training or distillation run (see the module docstring)."""

    # --- data
    data: str = ""  # data set: folder, CUB/Cars/SOP root or .zip (see mobilekd.data.datasets)
    layout: str = "auto"  # auto | folder | cub | cars | sop | zip
    train_fraction: float = 0.5  # first fraction of the classes trains, the rest is the test split
    preload: int = 320  # decode all images into memory, longer side capped at this (0: read from disk)
    unlabeled: str | None = None  # extra unlabeled images (folder or .zip) for the teacher losses (semi-supervised)
    unlabeled_per_batch: int = 32  # unlabeled images added to every P x K batch when --unlabeled is given
    unlabeled_limit: int = 0  # use this many of the unlabeled images, evenly spaced over the sorted list (0 = all):
    #                           the teacher embeds every unlabeled image, so a large folder costs teacher time
    skip_bad_images: bool = False  # train without unreadable images (counted in model.json) instead of stopping
    # --- student (for mobilekd.train: the model being fine-tuned)
    student: str = "mobilenetv1_025"  # a student/teacher name, timm:<name>, or a checkpoint folder
    embed_dim: int = 128  # 0 = the backbone's pooled features
    head_bn: bool = False
    student_size: int = 224  # input resolution of the student
    pretrained: bool = False  # start from ImageNet weights (teachers; mobilenetv1_025 -> shipped tf_mobilenetv1_025)
    student_weights: str | None = None  # backbone weights for --student: a .tflite ImageNet classifier, or a
    #                                     timm-style .safetensors / .pth state dict (see mobilekd.weights)
    init_from: str | None = None  # weight selection (Xu et al. 2024) of the student's backbone from a larger model
    #                               of its family: a name (efficientnet_lite0), checkpoint folder or .safetensors/.pth
    # --- teacher
    teacher: str | None = "efficientnet_lite0"  # name, checkpoint folder, .onnx, .npz embeddings, or none;
    #                                              A,B,C = a multi-branch master (ensemble of the branches)
    teacher_budget: int = 0  # label-free: the teacher sees only this many images, the student only those (0 = all)
    mixup_alpha: float = 0.0  # > 0: add mixed images, targets mixed in the teacher's output space (Beta(a, a))
    domain: list[str] | None = None  # extra specialist domains DATA=TEACHER (repeat the flag), one universal student
    teacher_size: int | None = None  # teacher input resolution (default: the teacher's own)
    teacher_cache: str | None = None  # a cache folder from `python -m mobilekd.embed` (default: OUT/teacher_cache)
    lowres: int | None = None  # cross-quality: the student sees the image down-sampled to this size
    jpeg_quality: int | None = None  # cross-quality: the student sees a JPEG of this quality
    # --- losses (total = sum of weight x loss): the registry's keys go here, see _add_loss_fields
    feature_layers: str = "-2=-2,-1=-1"  # student=teacher stage pairs of the feature-map losses: index or module name
    # --- optimisation
    epochs: int = 30
    batch_classes: int = 16  # P classes per batch
    images_per_class: int = 4  # K images per class
    steps_per_epoch: int = 0  # 0 = images / (P x K)
    lr: float = 2e-3
    head_lr_scale: float = 1.0  # the embedding head's lr = lr x this (a new head beside a pretrained backbone)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    views: int = 8  # fixed random views per training image, shared by student and cached teacher targets;
    #                 0 = a fresh random view every step (the teacher, if any, then runs live)
    crop_scale: float = 0.35  # smallest random-resized-crop area fraction (1 = no crops)
    flip: bool = True
    # --- run
    out: str = "runs/distill"
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # CPU threads (0 = the cores idle when the run starts; see mobilekd.threads)
    eval_every: int = 5  # evaluate on the test split every N epochs (and after the last)
    resume: bool = False  # continue from OUT/train_state.pt
    num_workers: int = 0  # DataLoader worker processes
    memory_format: str = "auto"  # auto | channels_last | contiguous: the student's layout while training. auto =
    #   channels-last for a student that starts from trained weights (1.2-1.5x faster steps on this CPU, gradients
    #   within 6e-5 of float64; benchmarks/results/train_speed_engine.md), NCHW for a random one (channels-last
    #   BatchNorm gradients were 6.7 % off there; benchmarks/results/train_speed.md)
    progress: bool = True

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Config":
        problems = []
        if not self.data:
            problems.append("no data set given (--data PATH)")
        for spec in loss_specs():
            for option in spec.options:
                key = spec.option_key(option)
                problem = option.problem(getattr(self, key), _flag(key))
                if problem:
                    problems.append(problem)
        for name in ("epochs", "batch_classes", "images_per_class", "student_size", "eval_every"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        for name in (*(spec.weight_key for spec in loss_specs()), "teacher_budget", "mixup_alpha",
                     "unlabeled_per_batch", "unlabeled_limit", "lr", "head_lr_scale", "weight_decay", "views",
                     "steps_per_epoch", "preload", "threads", "num_workers", "embed_dim", "warmup_epochs"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0")
        if self.memory_format not in MEMORY_FORMATS:
            problems.append(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if not 0 < self.crop_scale <= 1:
            problems.append("--crop-scale must be in (0, 1]")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            problems.append("--jpeg-quality must be in 1..95")
        if self.uses_teacher and not self.teacher:
            problems.append("teacher losses are weighted but no --teacher is given")
        if not self.active_losses():
            off = [f"{_flag(spec.option_key(o))} {o.off}" for spec in loss_specs() for o in spec.options
                   if o.off is not None]
            problems.append(f"nothing to train: every loss weight is 0 (or switched off: {', '.join(off)})"
                            if off else "nothing to train: every loss weight is 0")
        given = [flag for flag, value in (("--student-weights", self.student_weights), ("--pretrained", self.pretrained),
                                          ("--init-from", self.init_from)) if value]
        if len(given) > 1:
            problems.append(f"{' and '.join(given)} each give the student its weights: choose one")
        if self.teacher in ("none", ""):
            self.teacher = None
        if (self.teacher_budget or self.mixup_alpha) and not self.uses_teacher:
            problems.append("--teacher-budget / --mixup-alpha need a teacher loss (e.g. --kl-weight 1)")
        for spec in self.domain or []:
            if spec.count("=") != 1 or not all(spec.split("=")):
                problems.append(f"--domain expects DATA=TEACHER, got {spec!r}")
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # nan/inf pass every comparison above as False, then poison the run
            value = getattr(self, f.name)
            if float in _accepted(hints[f.name]) and isinstance(value, float) and not math.isfinite(value):
                problems.append(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if problems:
            raise MobileKDError("invalid configuration: " + "; ".join(problems))
        return self

    @property
    def effective_views(self) -> int:
        """Views per image; with no crops and no flips every view is the full image, so there is one."""
        return 1 if (self.crop_scale >= 1.0 and not self.flip) else self.views

    def view_sampler(self):
        from mobilekd.data.views import ViewSampler

        return ViewSampler(self.seed, scale=(self.crop_scale, 1.0), flip=self.flip)

    def training_images(self):
        """The training split of ``data`` followed by the unlabeled images (label -1), if any: the order the teacher
        cache and the samplers index."""
        import numpy as np

        from mobilekd.data import load_image_set

        images = load_image_set(self.data, "train", self.layout, self.train_fraction)
        if not self.unlabeled:
            return images
        unlabeled = load_image_set(self.unlabeled, layout="unlabeled")
        if 0 < self.unlabeled_limit < len(unlabeled):
            unlabeled = unlabeled.subset(np.linspace(0, len(unlabeled) - 1, self.unlabeled_limit).round().astype(int))
        return images.concat(unlabeled.without_labels())

    def data_identity(self, split: str = "train") -> dict:
        import os

        return {"path": os.path.abspath(self.data), "layout": self.layout, "split": split,
                "train_fraction": self.train_fraction}

    def active_losses(self) -> list[LossSpec]:
        """The registered losses this configuration switches on (weight > 0)."""
        return [spec for spec in loss_specs() if spec.is_on(self)]

    def loss_weight(self, name: str) -> float:
        return getattr(self, get_loss(name).weight_key)

    @property
    def uses_teacher(self) -> bool:
        return any(spec.needs_teacher for spec in self.active_losses())

    @property
    def uses_feature_maps(self) -> bool:
        return any(spec.inputs == "maps" for spec in self.active_losses())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ files and command line
    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MobileKDError(f"unknown configuration key(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: coerce(key, value, hints[key]) for key, value in data.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """The options of a YAML/JSON file, or of a recipe shipped in ``mobilekd/configs`` by its name
        (``--config cub`` = ``mobilekd/configs/cub.yaml``) when no such file exists."""
        path = Path(path)
        if not path.exists() and not path.suffix and len(path.parts) == 1:
            shipped = PACKAGED_CONFIGS / f"{path}.yaml"
            if not shipped.is_file():
                names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
                raise MobileKDError(f"config file not found: {path} (shipped recipes: {names})")
            path = shipped
        if not path.is_file():
            raise MobileKDError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MobileKDError(f"config file {path} is not a text file (expected YAML or JSON)") from None
        except OSError as error:
            raise MobileKDError(f"cannot read config file {path}: {error.strerror or error}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise MobileKDError(f"cannot parse config file {path}: {error}") from None
        if not isinstance(data, dict):
            raise MobileKDError(f"config file {path} must hold a mapping of option: value")
        return {str(k).replace("-", "_"): v for k, v in data.items()}

    @classmethod
    def parser(cls, prog: str, description: str, overrides: dict | None = None) -> argparse.ArgumentParser:
        """Every field as a ``--flag``; defaults are suppressed so only given flags override the file."""
        parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        parser.add_argument("--config", help="YAML or JSON file of options, or the name of a shipped recipe "
                            f"({', '.join(sorted(p.stem for p in PACKAGED_CONFIGS.glob('*.yaml')))}); flags override it")
        hints = typing.get_type_hints(cls)
        defaults = {**cls().to_dict(), **(overrides or {})}
        for field in fields(cls):
            flag = "--" + field.name.replace("_", "-")
            kind = hints[field.name]
            optional = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
            base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
            described = field.metadata.get("help")
            help_text = f"{described} " if described else ""
            help_text += f"(default: {defaults[field.name]})"
            if base is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            elif typing.get_origin(base) is list:
                parser.add_argument(flag, action="append", metavar=field.name.upper(), help=help_text + " (repeatable)")
            else:
                convert = _optional(base) if optional else base
                choices = field.metadata.get("choices")  # shown, checked by validate() (one error line)
                metavar = "{" + ",".join(map(str, choices)) + "}" if choices else field.name.upper()
                parser.add_argument(flag, type=convert, metavar=metavar, help=help_text)
        return parser

    @classmethod
    def from_args(cls, argv=None, prog: str = "mobilekd", description: str = "",
                  overrides: dict | None = None) -> "Config":
        args = vars(cls.parser(prog, description, overrides).parse_args(argv))
        values = dict(overrides or {})
        if "config" in args:
            values.update(cls.from_file(args.pop("config")))
        values.update(args)
        return cls.from_dict(values).validate()


def _accepted(kind) -> tuple:
    """The types a field's hint admits: ``float | None`` -> (float, NoneType); ``list[str]`` -> (list[str],)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return typing.get_args(kind)
    return (kind,)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(key: str, value, kind):
    """``value`` (from YAML/JSON or Python) as the type the Config field's hint ``kind`` names.

    Converts only what has one meaning -- YAML 1.1 reads ``1e-3`` as the *string* "1e-3", so "1e-3" -> 0.001,
    "5" -> 5, 5.0 -> 5 for an int, "true"/"no" -> bool, a single string -> [string] for a list, "none"/"null" ->
    None where None is allowed -- and refuses the rest naming the key, the value and the expected type."""
    accepted = _accepted(kind)
    if value is None and type(None) in accepted:
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "~") and type(None) in accepted \
            and str not in accepted:
        return None
    for base in accepted:
        if base is type(None):
            continue
        converted = _convert(value, base)
        if converted is not _NO:
            return converted
    names = " or ".join(_EXPECTED.get(b, "a list of strings" if typing.get_origin(b) is list else str(b))
                        for b in accepted if b is not type(None))
    raise MobileKDError(f"configuration key {key!r}: {value!r} is not {names}"
                        + (" (or none)" if type(None) in accepted else ""))


_NO = object()


def _convert(value, base):
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        items = value if isinstance(value, (list, tuple)) else [value]
        out = [_convert(v, item) for v in items]
        return _NO if any(v is _NO for v in out) else out
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        return _NO
    if isinstance(value, bool):  # True is an int to Python, never a number to a user
        return _NO
    if base is int:
        if isinstance(value, int):
            return value
        number = _convert(value, float)
        return int(number) if number is not _NO and math.isfinite(number) and number == int(number) else _NO
    if base is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return _NO
        return _NO
    if base is str:
        return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else _NO
    return value if isinstance(value, base) else _NO


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


_LOSS_KEYS_AFTER = "jpeg_quality"  # the generated loss keys follow this field (config files, --help)
_BASE_FIELDS = [(f.name, f.type, f.default) for f in fields(Config)]
_GENERATED_METHODS = ("__init__", "__repr__", "__eq__", "__match_args__", "__hash__")


def _add_loss_fields(specs: list[LossSpec]) -> None:
    """(Re)generate Config's loss keys from ``specs`` *in place*: every module that imported ``Config`` sees a
    loss registered after it. The dataclass is rebuilt from the base fields plus the losses' keys."""
    base = {name for name, _, _ in _BASE_FIELDS}
    generated = []
    for spec in specs:
        options = {spec.option_key(o): o for o in spec.options}
        for key, kind, default, help_text in spec.config_fields():
            if key in base or any(key == other for other, *_ in generated):
                raise ValueError(f"loss {spec.name!r}: configuration key {key!r} already exists")
            choices = options[key].choices if key in options else None
            generated.append((key, kind, dataclasses.field(default=default,
                                                           metadata={"help": help_text, "choices": choices})))
    at = next(i for i, (name, _, _) in enumerate(_BASE_FIELDS) if name == _LOSS_KEYS_AFTER) + 1
    ordered = [*_BASE_FIELDS[:at], *generated, *_BASE_FIELDS[at:]]
    for name in _GENERATED_METHODS:
        if name in Config.__dict__:
            delattr(Config, name)
    for name in set(Config.__dataclass_fields__) - {name for name, _, _ in ordered}:
        if name in Config.__dict__:
            delattr(Config, name)  # the class default of a loss that was unregistered
    Config.__annotations__ = {name: kind for name, kind, _ in ordered}
    for name, _, default in ordered:
        setattr(Config, name, default)
    dataclass(Config)


on_change(_add_loss_fields)


def _optional(base):
    def convert(text: str):
        return None if text.lower() in ("none", "null", "") else base(text)

    convert.__name__ = base.__name__
    return convert

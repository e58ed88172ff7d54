"""One configuration object for ``python -m mobilekd.distill`` / ``mobilekd.train`` and the Python API.

Values come from, in increasing priority: the defaults below, a YAML/JSON file (``--config``), and command
line flags (every key is a flag: ``embed_dim`` -> ``--embed-dim``). ``Config.validate`` turns bad values into
one clear error.

The loss settings are not fields of their own: ``Config.losses`` maps every loss registered in
:mod:`mobilekd.losses.registry` to its weight and options (``{"kl": {"weight": 1.0, "temperature": 0.1}}``),
filled from the registry when a Config is made. The flat keys ``NAME_weight`` / ``NAME_OPTION`` read and write
that mapping -- ``Config(rkd_angle_weight=2.0)``, ``config.kl_weight``, ``--kl-temperature``, the YAML key
``kl_weight`` -- and a YAML/JSON file may also give them nested (``losses: {kl: {weight: 1.0}}``). The flags
are generated from the registry when the parser is built, so a loss registered later has them too.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mobilekd.errors import MobileKDError, shown
from mobilekd.io import require_file
from mobilekd.losses import get_loss, loss_specs
from mobilekd.losses.registry import LossSpec, on_change


PACKAGED_CONFIGS = Path(__file__).parent / "configs"  # recipes shipped with the package, by name for --config
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # --memory-format: the student's tensor layout in training
MAX_SEED = 2 ** 32 - 1  # numpy's SeedSequence/RandomState and torch.manual_seed all take 0..2**32-1
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")  # --device: what select_device can place a run on
LOSSES_FIELD = "losses"  # the field holding the loss settings; the flat loss keys take its place in files and --help


def fixed(default):
    """A field a ``--resume`` run must keep (it shapes the data, the models or the teacher targets): the
    checkpoint's keys to compare are these fields (``Config.resume_keys``), not a hand-kept list."""
    return field(default=default, metadata={"fixed_on_resume": True})


class Key(NamedTuple):
    """One flat configuration key (a field, or a loss's weight / option): what files, flags and checks see."""

    name: str
    type: Any
    default: Any
    help: str = ""
    choices: tuple | None = None
    fixed_on_resume: bool = False
    loss: tuple[str, str] | None = None  # (loss name, option name) for a loss key


@dataclass(init=False)
class Config:
    """Every option of a training or distillation run (see the module docstring)."""

    # --- data
    data: str = fixed("")  # data set: folder, CUB/Cars/SOP root or .zip (see mobilekd.data.image_sets)
    layout: str = fixed("auto")  # auto | folder | cub | cars | sop | zip
    train_fraction: float = fixed(0.5)  # first fraction of the classes trains, the rest is the test split
    preload: int = 320  # decode all images into memory, longer side capped at this (0: read from disk)
    unlabeled: str | None = fixed(None)  # extra unlabeled images (folder or .zip) for the teacher losses
    #                                      (semi-supervised)
    unlabeled_per_batch: int = 32  # unlabeled images added to every P x K batch when --unlabeled is given
    unlabeled_limit: int = fixed(0)  # use this many of the unlabeled images, evenly spaced over the sorted list
    #                                  (0 = all): the teacher embeds every unlabeled image, so a large folder costs
    #                                  teacher time
    skip_bad_images: bool = False  # train without unreadable images (counted in model.json) instead of stopping
    # --- student (for mobilekd.train: the model being fine-tuned)
    student: str = fixed("mobilenetv1_025")  # a student/teacher name, timm:<name>, or a checkpoint folder
    embed_dim: int = fixed(128)  # 0 = the backbone's pooled features
    head_bn: bool = fixed(False)
    student_size: int = fixed(224)  # input resolution of the student
    pretrained: bool = fixed(False)  # start from ImageNet weights (teachers; mobilenetv1_025 -> shipped
    #                                  tf_mobilenetv1_025)
    student_weights: str | None = fixed(None)  # backbone weights for --student: a .tflite ImageNet classifier, or a
    #                                     timm-style .safetensors / .pth state dict (see mobilekd.weights)
    init_from: str | None = fixed(None)  # weight selection (Xu et al. 2024) of the student's backbone from a larger
    #                                      model of its family: a name (efficientnet_lite0), checkpoint folder or
    #                                      .safetensors/.pth
    # --- teacher
    teacher: str | None = fixed("efficientnet_lite0")  # name, checkpoint folder, .onnx, .npz embeddings, or none;
    #                                              A,B,C = a multi-branch master (ensemble of the branches)
    teacher_budget: int = fixed(0)  # label-free: the teacher sees only this many images, the student only those
    #                                 (0 = all)
    mixup_alpha: float = 0.0  # > 0: add mixed images, targets mixed in the teacher's output space (Beta(a, a))
    domain: list[str] | None = fixed(None)  # extra specialist domains DATA=TEACHER (repeat the flag), one
    #                                         universal student
    teacher_size: int | None = fixed(None)  # teacher input resolution (default: the teacher's own)
    teacher_cache: str | None = None  # a cache folder from `python -m mobilekd.embed` (default: OUT/teacher_cache)
    lowres: int | None = None  # cross-quality: the student sees the image down-sampled to this size
    jpeg_quality: int | None = None  # cross-quality: the student sees a JPEG of this quality
    # --- losses (total = sum of weight x loss): {loss name: {"weight": w, option: value}} for every registered
    #     loss, filled from the registry when a Config is made; flat keys (kl_weight) read and write it
    losses: dict = field(default_factory=dict)
    feature_layers: str = "-2=-2,-1=-1"  # student=teacher stage pairs of the feature-map losses: index or module name
    # --- optimisation
    epochs: int = 30
    batch_classes: int = fixed(16)  # P classes per batch
    images_per_class: int = fixed(4)  # K images per class
    steps_per_epoch: int = 0  # 0 = images / (P x K)
    lr: float = 2e-3
    head_lr_scale: float = 1.0  # the embedding head's lr = lr x this (a new head beside a pretrained backbone)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    views: int = fixed(8)  # fixed random views per training image, shared by student and cached teacher targets;
    #                 0 = a fresh random view every step (the teacher, if any, then runs live)
    crop_scale: float = 0.35  # smallest random-resized-crop area fraction (1 = no crops)
    flip: bool = True
    # --- run
    out: str = "runs/distill"
    seed: int = fixed(0)
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # CPU threads (0 = the cores idle when the run starts; see mobilekd.threads)
    eval_every: int = 5  # evaluate on the test split every N epochs (and after the last)
    resume: bool = False  # continue from OUT/train_state.pt
    overwrite: bool = False  # replace the files of an earlier run in --out (never files the run did not write)
    num_workers: int = 0  # DataLoader worker processes
    memory_format: str = "auto"  # auto | channels_last | contiguous: the student's layout while training. auto =
    #   channels-last for a student that starts from trained weights (faster), NCHW for a random one (where
    #   channels-last BatchNorm gradients were off); measured in benchmarks/results/train_speed/
    progress: bool = True

    def __init__(self, **values):
        """Keyword arguments: any field, any flat loss key (``kl_weight=1``), or ``losses`` (nested, merged
        over the registry's defaults; flat loss keys win)."""
        for f in _base_fields():
            if f.name in values:
                value = values.pop(f.name)
            else:
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, LOSSES_FIELD, loss_settings(values.pop(LOSSES_FIELD, None)))
        for key, value in values.items():
            located = _loss_keys().get(key)
            if located is None:
                raise TypeError(f"Config.__init__() got an unexpected keyword argument {key!r}")
            self.losses[located[0]][located[1]] = value

    def __getattr__(self, name: str):
        """A flat loss key (``config.kl_weight``): read from ``losses`` (the registry's default for a loss
        registered after this Config was made)."""
        located = None if name.startswith("__") or name == LOSSES_FIELD else _loss_keys().get(name)
        if located is None:
            raise AttributeError(f"'Config' object has no attribute {name!r}")
        loss, option = located
        settings = self.__dict__.get(LOSSES_FIELD, {}).get(loss)
        return settings[option] if settings and option in settings else loss_settings()[loss][option]

    def __setattr__(self, name: str, value) -> None:
        located = None if name in _field_names() else _loss_keys().get(name)
        if located is None:
            object.__setattr__(self, name, value)
        else:
            self.losses.setdefault(located[0], {})[located[1]] = value

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Config":
        problems = [*_loss_problems(self), *_range_problems(self), *_combination_problems(self)]
        if self.teacher in ("none", ""):  # after the checks above, as always: "none" counts as given there
            self.teacher = None
        problems += [*_teacher_problems(self), *_finite_problems(self)]
        if problems:
            raise MobileKDError("invalid configuration: " + "; ".join(problems))
        return self

    @property
    def effective_views(self) -> int:
        """Views per image; with no crops and no flips every view is the full image, so there is one."""
        return 1 if (self.crop_scale >= 1.0 and not self.flip) else self.views

    # the data a configuration names: mobilekd.data.training (kept here as methods for existing callers)
    def active_losses(self) -> list[LossSpec]:
        """The registered losses this configuration switches on (weight > 0)."""
        return [spec for spec in loss_specs() if spec.is_on(self)]

    def losses_line(self) -> str:
        """The active losses and their weights in one line, as a run prints it when it starts, e.g.
        ``losses: metric x 0.1 (normalized_softmax), kl x 1.0 (temperature 0.1)``."""
        parts = []
        for spec in self.active_losses():
            shown = [_option_text(option, getattr(self, spec.option_key(option))) for option in spec.options]
            shown = [text for text in shown if text]
            options = f" ({', '.join(shown)})" if shown else ""
            parts.append(f"{spec.name} x {float(self.loss_weight(spec.name))}{options}")
        return "losses: " + (", ".join(parts) or "none")

    def loss_weight(self, name: str) -> float:
        return getattr(self, get_loss(name).weight_key)

    @property
    def uses_teacher(self) -> bool:
        return any(spec.needs_teacher for spec in self.active_losses())

    @property
    def uses_feature_maps(self) -> bool:
        return any(spec.inputs == "maps" for spec in self.active_losses())

    def to_dict(self) -> dict:
        """Every flat key and its value, in ``keys()`` order (what config.json and the checkpoints hold)."""
        return {key.name: copy.deepcopy(getattr(self, key.name)) for key in self.keys()}

    # ------------------------------------------------------------------ keys, files and command line
    @classmethod
    def keys(cls) -> list[Key]:
        """Every flat key: the fields, with the registered losses' keys where ``losses`` stands."""
        hints = typing.get_type_hints(cls)
        keys = []
        for f in _base_fields(with_losses=True):
            if f.name == LOSSES_FIELD:
                keys += _loss_key_list()
            else:
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                fixed_on_resume = f.metadata.get("fixed_on_resume", False)
                keys.append(Key(f.name, hints[f.name], default, fixed_on_resume=fixed_on_resume))
        return keys

    @classmethod
    def key_types(cls) -> dict[str, Any]:
        """{flat key: its type hint}, for converting values (``coerce``)."""
        return {key.name: key.type for key in cls.keys()}

    @classmethod
    def resume_keys(cls) -> tuple[str, ...]:
        """The keys a ``--resume`` run must share with the checkpoint: ``fixed`` fields and loss options
        declared ``fixed_on_resume`` (e.g. ``metric_loss``: another metric loss has other parameters)."""
        return tuple(key.name for key in cls.keys() if key.fixed_on_resume)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        data = flatten_losses(data)
        types_ = cls.key_types()
        unknown = sorted(set(data) - set(types_))
        if unknown:
            raise MobileKDError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**{key: coerce(key, value, types_[key]) for key, value in data.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """The options of a YAML/JSON file or shipped recipe, as flat keys (``read_config_file``)."""
        return read_config_file(path)

    @classmethod
    def parser(cls, prog: str, description: str, overrides: dict | None = None) -> argparse.ArgumentParser:
        """Every key as a ``--flag`` (the loss keys from the registry as it is now); defaults are suppressed so
        only given flags override the file."""
        parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        recipes = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
        parser.add_argument("--config", help="YAML or JSON file of options, or the name of a shipped recipe "
                            f"({recipes}); flags override it")
        defaults = {**cls().to_dict(), **(overrides or {})}
        for key in cls.keys():
            _add_flag(parser, key, defaults[key.name])
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


MAX_CONFIG_VALUES = 100_000  # a real config holds a few hundred; a 300-byte YAML alias bomb expands to millions



def read_config_file(path: str | Path) -> dict:
    """The options of a YAML/JSON file, or of a recipe shipped in ``mobilekd/configs`` by its name
    (``--config cub`` = ``mobilekd/configs/cub.yaml``) when no such file exists; a nested ``losses:`` mapping
    comes back as flat keys."""
    path = Path(path)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        shipped = PACKAGED_CONFIGS / f"{path}.yaml"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
            raise MobileKDError(f"config file not found: {path} (shipped recipes: {names})")
        path = shipped
    require_file(path, "config file")
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
    if _expanded_size(data) > MAX_CONFIG_VALUES:
        raise MobileKDError(f"config file {path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML "
                            "aliases repeating aliases?): refused")
    if not isinstance(data, dict):
        raise MobileKDError(f"config file {path} must hold a mapping of option: value")
    return flatten_losses({str(k).replace("-", "_"): v for k, v in data.items()})

def _expanded_size(data, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values ``data`` holds with every YAML alias expanded (a shared list counts each time it is
    referenced, as printing or copying it would), counted no further than ``limit + 1``."""
    count, stack = 0, [data]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return count


# ------------------------------------------------------------------ validation, one group of checks each
def _loss_problems(config: Config) -> list[str]:
    problems = [] if config.data else ["no data set given (--data PATH)"]
    for spec in loss_specs():
        for option in spec.options:
            key = spec.option_key(option)
            problem = option.problem(getattr(config, key), _flag(key))
            if problem:
                problems.append(problem)
    return problems

def _range_problems(config: Config) -> list[str]:
    problems = [f"{_flag(name)} must be >= 1" for name in
                ("epochs", "batch_classes", "images_per_class", "student_size", "eval_every")
                if getattr(config, name) < 1]
    problems += [f"{_flag(name)} must be >= 0" for name in
                 (*(spec.weight_key for spec in loss_specs()), "teacher_budget", "mixup_alpha",
                  "unlabeled_per_batch", "unlabeled_limit", "lr", "head_lr_scale", "weight_decay", "views",
                  "steps_per_epoch", "preload", "threads", "num_workers", "embed_dim", "warmup_epochs")
                 if getattr(config, name) < 0]
    if config.teacher_size is not None and config.teacher_size < 1:  # 0 would silently mean the teacher's own
        problems.append(f"--teacher-size must be >= 1 (or left out: the teacher's own), got {config.teacher_size}")
    if isinstance(config.seed, int) and not 0 <= config.seed <= MAX_SEED:
        problems.append(f"--seed must be in 0..{MAX_SEED} (what numpy and torch accept), got {config.seed}")
    if not isinstance(config.device, str) or not DEVICE_PATTERN.fullmatch(config.device):
        problems.append(f"--device must be cpu, cuda, cuda:N or mps, got {config.device!r}")
    if config.memory_format not in MEMORY_FORMATS:
        problems.append(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)}, got {config.memory_format!r}")
    if not 0 < config.crop_scale <= 1:
        problems.append("--crop-scale must be in (0, 1]")
    if config.jpeg_quality is not None and not 1 <= config.jpeg_quality <= 95:
        problems.append("--jpeg-quality must be in 1..95")
    return problems

def _combination_problems(config: Config) -> list[str]:
    problems = []
    if config.uses_teacher and not config.teacher:
        problems.append("teacher losses are weighted but no --teacher is given")
    if not config.active_losses():
        off = [f"{_flag(spec.option_key(o))} {o.off}" for spec in loss_specs() for o in spec.options
               if o.off is not None]
        problems.append(f"nothing to train: every loss weight is 0 (or switched off: {', '.join(off)})"
                        if off else "nothing to train: every loss weight is 0")
    given = [flag for flag, value in (("--student-weights", config.student_weights),
                                      ("--pretrained", config.pretrained), ("--init-from", config.init_from)) if value]
    if len(given) > 1:
        problems.append(f"{' and '.join(given)} each give the student its weights: choose one")
    if (config.teacher_budget or config.mixup_alpha) and not config.uses_teacher:
        problems.append("--teacher-budget / --mixup-alpha need a teacher loss (e.g. --kl-weight 1)")
    for spec in config.domain or []:
        if spec.count("=") != 1 or not all(spec.split("=")):
            problems.append(f"--domain expects DATA=TEACHER, got {spec!r}")
    return problems

def _teacher_problems(config: Config) -> list[str]:
    """What the teachers' kinds (from their names: ``A,B`` an ensemble, ``.onnx``/``.tflite`` a black box,
    ``.npz`` precomputed embeddings) rule out: feature-map losses need a network, precomputed embeddings
    have one view per image."""
    from mobilekd.runtime.file_embedder import BLACK_BOX_SUFFIXES

    if not config.uses_teacher:
        return []
    teachers = [config.teacher] + [spec.split("=")[1] for spec in config.domain or [] if spec.count("=") == 1]
    problems = []
    for teacher in filter(None, teachers):
        suffix = Path(teacher).suffix.lower()
        network = "," not in teacher and suffix not in (*BLACK_BOX_SUFFIXES, ".npz")
        if config.uses_feature_maps and not network:
            problems.append("hint/attention losses need a teacher network with feature maps, not a black box "
                            "or an ensemble")
        if "," not in teacher and suffix == ".npz" and config.effective_views != 1:
            problems.append("a teacher of precomputed embeddings has one view per image: use --views 1")
    return list(dict.fromkeys(problems))

def _finite_problems(config: Config) -> list[str]:
    """nan/inf pass every comparison above as False, then poison the run."""
    return [f"{_flag(key.name)} must be a finite number, got {value}" for key in config.keys()
            if float in _accepted(key.type) and isinstance(value := getattr(config, key.name), float)
            and not math.isfinite(value)]


def _add_flag(parser: argparse.ArgumentParser, key: Key, default) -> None:
    flag = _flag(key.name)
    optional = isinstance(key.type, types.UnionType) or typing.get_origin(key.type) is typing.Union
    base = next(a for a in typing.get_args(key.type) if a is not type(None)) if optional else key.type
    help_text = (f"{key.help} " if key.help else "") + f"(default: {default})"
    if base is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
    elif typing.get_origin(base) is list:
        parser.add_argument(flag, action="append", metavar=key.name.upper(), help=help_text + " (repeatable)")
    else:
        convert = _optional(base) if optional else base
        # choices are shown, and checked by validate() (one error line)
        metavar = "{" + ",".join(map(str, key.choices)) + "}" if key.choices else key.name.upper()
        parser.add_argument(flag, type=convert, metavar=metavar, help=help_text)


# ------------------------------------------------------------------ the loss settings, from the registry
def _base_fields(with_losses: bool = False) -> list:
    return [f for f in fields(Config) if with_losses or f.name != LOSSES_FIELD]


def _field_names() -> set[str]:
    return {f.name for f in fields(Config)}


def _loss_key_list() -> list[Key]:
    """The flat keys of every registered loss, in registration order, each loss's weight first."""
    keys = []
    for spec in loss_specs():
        options = {o.name: o for o in spec.options}
        keys.append(Key(spec.weight_key, float, spec.weight, f"weight of the {spec.help or spec.name}",
                        loss=(spec.name, "weight")))
        keys += [Key(spec.option_key(o), o.type, o.default, o.help, o.choices, o.fixed_on_resume, (spec.name, o.name))
                 for o in options.values()]
    return keys


def _loss_keys() -> dict[str, tuple[str, str]]:
    """{flat loss key: (loss name, option name)}; the weight's option name is ``weight``."""
    return {key.name: key.loss for key in _loss_key_list()}


def loss_settings(given: dict | None = None) -> dict[str, dict]:
    """{loss name: {"weight": w, option: value}} with the registry's defaults, ``given`` (nested) over them."""
    settings = {spec.name: {"weight": spec.weight, **{o.name: o.default for o in spec.options}}
                for spec in loss_specs()}
    for name, options in (given or {}).items():
        if name not in settings or not set(options) <= set(settings[name]):
            raise TypeError(f"Config.__init__() got unknown loss settings {name!r}: {options!r}")
        settings[name].update(options)
    return settings


def flatten_losses(data: dict) -> dict:
    """``data`` with a nested ``losses: {NAME: {OPTION: value}}`` mapping turned into flat keys (``kl_weight``);
    flat keys given beside it win."""
    nested = data.get(LOSSES_FIELD)
    if nested is None:
        return data
    if not isinstance(nested, dict):
        raise MobileKDError("configuration key 'losses' must map loss names to their options, "
                            "e.g. losses: {kl: {weight: 1.0, temperature: 0.1}}")
    known = _loss_keys()
    flat = {}
    for name, options in nested.items():
        if not isinstance(options, dict):
            raise MobileKDError(f"configuration key 'losses.{name}' must map options to values, e.g. {{weight: 1.0}}")
        for option, value in options.items():
            key = f"{name}_{option}".replace("-", "_")
            if known.get(key) is None:
                raise MobileKDError(f"unknown configuration key: losses.{name}.{option} (registered losses: "
                                    f"{', '.join(spec.name for spec in loss_specs())})")
            flat[key] = value
    return {**flat, **{k: v for k, v in data.items() if k != LOSSES_FIELD}}


def _check_loss_keys(specs: list[LossSpec]) -> None:
    """Registry listener: refuse a loss whose key is a field or another loss's key (the change is undone)."""
    taken = _field_names()
    for spec in specs:
        for key, *_ in spec.config_fields():
            if key in taken:
                raise ValueError(f"loss {spec.name!r}: configuration key {key!r} already exists")
            taken.add(key)


on_change(_check_loss_keys)


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
    raise MobileKDError(f"configuration key {shown(key)}: {shown(value)} is not {names}"
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


def _option_text(option, value) -> str:
    """How ``losses_line`` shows a loss option: a flag by its name when on, the option naming the loss's kind
    (``metric_loss``) by its value alone, any other as ``name value``."""
    if isinstance(value, bool):
        return option.name if value else ""
    return str(value) if option.name == "loss" else f"{option.name} {value}"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _optional(base):
    def convert(text: str):
        return None if text.lower() in ("none", "null", "") else base(text)

    convert.__name__ = base.__name__
    return convert

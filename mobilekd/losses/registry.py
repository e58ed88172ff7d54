"""The registry of training losses: each loss module registers itself, and the configuration, the command line
and the training engine are generated from what is registered (as timm's ``@register_model``).

    @register_loss("rkd_angle", inputs="embeddings", help="RKD angle loss (Park et al. 2019)")
    class RKDAngleLoss(nn.Module): ...

A registered loss ``NAME`` gets the configuration key ``NAME_weight`` (flag ``--NAME-weight``, default
``weight``, 0 = off) and one key ``NAME_OPTION`` (flag ``--NAME-OPTION``) per declared :class:`Option`; the
engine builds it for every domain where its weight is > 0 and calls it with what ``inputs`` names:

* ``"embeddings"``: ``loss(student [N, Ds], teacher [N, Dt])``, the embeddings of every row of the batch (mixed
  rows included); needs a teacher.
* ``"maps"``: ``loss(student_maps, teacher_maps)``, lists of NCHW feature maps at the ``--feature-layers``
  stage pairs; needs a live teacher network.
* ``"labels"``: ``loss(embeddings [M, D], labels [M])`` on the labeled rows; skipped in a domain without labels.

The loss is built with ``cls.from_context(context, **options)`` when the class defines it (for what depends on
the run: dimensions, classes, channels; see :class:`LossContext`), else ``cls(**options)``. Its parameters, if
any, are trained with the student. Registering from outside the package (a plug-in, a test) works the same,
at any time: a Config made afterwards holds the new loss's settings, and a parser built afterwards its flags;
adding a loss is one new module.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Callable

INPUTS = ("embeddings", "maps", "labels")


@dataclass(frozen=True)
class Option:
    """One hyper-parameter of a loss: the keyword its constructor takes, its type, default and help.
    ``choices`` / ``minimum`` (value >= minimum) / ``above`` (value > above) are checked when the configuration
    is validated; the value ``off`` (if given) switches the loss off like weight 0 (``--metric-loss none``);
    ``fixed_on_resume``: a ``--resume`` run must keep the value (it decides which parameters the loss has)."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    above: float | None = None
    off: Any = None
    fixed_on_resume: bool = False

    def problem(self, value, flag: str) -> str | None:
        """One line saying what is wrong with ``value``, or None."""
        if self.choices is not None and value not in self.choices:
            return f"{flag} must be one of {', '.join(map(str, self.choices))}"
        if self.minimum is not None and not value >= self.minimum:
            return f"{flag} must be >= {self.minimum:g}"
        if self.above is not None and not value > self.above:
            return f"{flag} must be > {self.above:g}"
        return None


@dataclass(frozen=True)
class LossContext:
    """What a loss may need to build itself for one domain of a run."""

    student_dim: int
    teacher_dim: int | None = None  # None without a teacher
    num_classes: int = 0  # labeled classes of the domain's training split
    student_channels: tuple[int, ...] = ()  # channels of the student's / teacher's --feature-layers stages
    teacher_channels: tuple[int, ...] = ()


@dataclass(frozen=True)
class LossSpec:
    name: str
    cls: Callable
    inputs: str
    options: tuple[Option, ...] = ()
    help: str = ""
    weight: float = 0.0  # default weight

    @property
    def weight_key(self) -> str:
        return f"{self.name}_weight"

    def option_key(self, option: Option) -> str:
        return f"{self.name}_{option.name}"

    def config_fields(self) -> list[tuple[str, type, Any, str]]:
        """(key, type, default, help) of every configuration key this loss adds, the weight first."""
        return [(self.weight_key, float, self.weight, f"weight of the {self.help or self.name}"),
                *((self.option_key(o), o.type, o.default, o.help) for o in self.options)]

    def options_of(self, config) -> dict[str, Any]:
        """The loss's keyword arguments as set in ``config``."""
        return {o.name: getattr(config, self.option_key(o)) for o in self.options}

    def is_on(self, config) -> bool:
        return getattr(config, self.weight_key) > 0 and not any(
            o.off is not None and getattr(config, self.option_key(o)) == o.off for o in self.options)

    @property
    def needs_teacher(self) -> bool:
        return self.inputs != "labels"

    def build(self, context: LossContext, config):
        """The loss module for one domain of a run configured by ``config``."""
        options = self.options_of(config)
        factory = getattr(self.cls, "from_context", None)
        return factory(context, **options) if factory is not None else self.cls(**options)


_LOSSES: dict[str, LossSpec] = {}
_listeners: list[Callable[[list[LossSpec]], None]] = []


def register_loss(name: str, inputs: str, options=(), help: str = "", weight: float = 0.0):
    """Class decorator: register a loss under ``name`` (see the module docstring)."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ValueError(f"loss name must be a lower-case identifier, got {name!r}")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    options = tuple(options)
    for option in options:
        if not option.name.isidentifier():
            raise ValueError(f"loss {name!r}: option name must be an identifier, got {option.name!r}")

    def decorate(cls):
        if name in _LOSSES:
            raise ValueError(f"a loss named {name!r} is already registered ({_LOSSES[name].cls.__qualname__})")
        spec = LossSpec(name, cls, inputs, options, help, weight)
        _update({**_LOSSES, name: spec})
        return cls

    return decorate


def unregister_loss(name: str) -> None:
    """Remove a registered loss (for tests and notebooks); its configuration keys go with it."""
    _update({key: spec for key, spec in _LOSSES.items() if key != name})


def loss_specs() -> list[LossSpec]:
    """Every registered loss, in registration order."""
    return list(_LOSSES.values())


def get_loss(name: str) -> LossSpec:
    return _LOSSES[name]


def on_change(listener: Callable[[list[LossSpec]], None]) -> None:
    """Call ``listener(specs)`` now and whenever the registry changes (the configuration checks the new keys);
    a listener that raises rejects the change (e.g. a key that clashes with an existing one)."""
    listener(loss_specs())
    _listeners.append(listener)


def _update(losses: dict[str, LossSpec]) -> None:
    try:
        for listener in _listeners:
            listener(list(losses.values()))
    except Exception:
        for listener in _listeners:  # back to the state before the change
            listener(loss_specs())
        raise
    _LOSSES.clear()
    _LOSSES.update(losses)

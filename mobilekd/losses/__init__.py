"""Losses: each a small module with its formula and source paper in the docstring, registered with
``@register_loss`` (see :mod:`mobilekd.losses.registry`). Importing this package imports every module in it,
so a new loss is one new file here: it registers itself, and gets its configuration keys and flags.

The built-in losses are imported first, in the order of their configuration keys (and of ``--help``).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from mobilekd.losses.registry import LossContext, Option, get_loss, loss_specs, register_loss, unregister_loss

_BUILT_IN = ("metric", "absolute", "relative", "rkd", "distance_kl", "hint", "attention")
for _module in (*_BUILT_IN, *sorted(m.name for m in _pkgutil.iter_modules(__path__) if m.name not in _BUILT_IN)):
    _importlib.import_module(f"{__name__}.{_module}")

from mobilekd.losses.absolute import AbsoluteTeacherLoss  # noqa: E402
from mobilekd.losses.attention import AttentionTransferLoss  # noqa: E402
from mobilekd.losses.distance_kl import DistanceKLLoss  # noqa: E402
from mobilekd.losses.distances import pairwise_distances  # noqa: E402
from mobilekd.losses.hint import HintLoss  # noqa: E402
from mobilekd.losses.metric import METRIC_LOSSES, MetricLoss  # noqa: E402
from mobilekd.losses.relative import RelativeTeacherLoss  # noqa: E402
from mobilekd.losses.rkd import RKDAngleLoss, RKDDistanceLoss  # noqa: E402

__all__ = ["AbsoluteTeacherLoss", "RelativeTeacherLoss", "MetricLoss", "METRIC_LOSSES", "pairwise_distances",
           "RKDDistanceLoss", "RKDAngleLoss", "DistanceKLLoss", "HintLoss", "AttentionTransferLoss",
           "LossContext", "Option", "get_loss", "loss_specs", "register_loss", "unregister_loss"]

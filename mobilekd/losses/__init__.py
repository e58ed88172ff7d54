"""Losses: each a small module with its formula and source paper in the docstring."""

from mobilekd.losses.absolute import AbsoluteTeacherLoss
from mobilekd.losses.metric import METRIC_LOSSES, MetricLoss
from mobilekd.losses.relative import RelativeTeacherLoss, pairwise_distances
from mobilekd.losses.attention import AttentionTransferLoss
from mobilekd.losses.hint import HintLoss
from mobilekd.losses.rkd import RKDAngleLoss, RKDDistanceLoss
from mobilekd.losses.similarity_kl import DistanceKLLoss

__all__ = ["AbsoluteTeacherLoss", "RelativeTeacherLoss", "MetricLoss", "METRIC_LOSSES", "pairwise_distances",
           "RKDDistanceLoss", "RKDAngleLoss", "DistanceKLLoss", "HintLoss", "AttentionTransferLoss"]

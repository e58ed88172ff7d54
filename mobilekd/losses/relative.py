"""Relative teacher loss.

Yu et al., "Learning Metrics from Teachers: Compact Networks for Image Embedding", CVPR 2019, Eq. "relative
teacher": the student's pairwise distances within a batch match the teacher's, so the dimensions may differ,

    D_ij = || f(x_i) - f(x_j) ||_2                        (Euclidean, on L2-normalised embeddings)
    L_rel = || D^S - D^T ||_F = sqrt( sum_ij (D^S_ij - D^T_ij)^2 )        (``reduction="frobenius"``, official)
    L_rel = mean_{i != j} (D^S_ij - D^T_ij)^2                              (``reduction="mean_sq"``)
    L_rel = mean_{i != j} |D^S_ij - D^T_ij|                                (``reduction="mean_abs"``)

The Frobenius form is summed over all N^2 pairs, so its scale grows with the batch (the official code's);
the mean forms do not. Distances use sqrt(clamp(., 1e-12)) so the diagonal has a finite gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilekd.losses.distances import off_diagonal, pairwise_distances
from mobilekd.losses.registry import Option, register_loss

REDUCTIONS = ("frobenius", "mean_sq", "mean_abs")


@register_loss("relative", inputs="embeddings", help="relative teacher loss (Yu et al. 2019)",
               options=[Option("reduction", str, "frobenius", "how the distance differences are reduced",
                               choices=REDUCTIONS)])
class RelativeTeacherLoss(nn.Module):
    def __init__(self, reduction: str = "frobenius"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        difference = pairwise_distances(student) - pairwise_distances(teacher.detach())
        if self.reduction == "frobenius":
            return difference.pow(2).sum().clamp_min(1e-12).sqrt()
        difference = difference[off_diagonal(len(student), student.device)]
        return difference.pow(2).mean() if self.reduction == "mean_sq" else difference.abs().mean()

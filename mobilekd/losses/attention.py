"""Attention transfer on intermediate feature maps.

Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional Neural
Networks via Attention Transfer", ICLR 2017, as used for embedding distillation by Yu et al., "Learning
Metrics from Teachers", CVPR 2019. Per sample, the spatial attention map of an activation tensor A [C, H, W]
is the channel sum of squared activations, flattened and L2-normalised,

    Q(A) = vec(sum_c A_c^2) / || vec(sum_c A_c^2) ||_2
    L_AT = (1/L) * sum_l mean( (Q(S_l) - Q(T_l))^2 )        (mean over batch and the H_T * W_T positions)

The channel counts of student and teacher may differ (no adapter). When the spatial sizes differ, the
student's *unnormalised* attention map sum_c S_c^2 is resized to the teacher's H x W by bilinear
``F.interpolate`` (align_corners=False) before normalising. The reference code uses the channel *mean*
instead of the sum; after the L2 normalisation the two are identical.

Eq. 2 of the AT paper is (beta/2) * sum_l || Q_S/||Q_S||_2 - Q_T/||Q_T||_2 ||_p (p = 2: the norm of the
difference, per sample, not squared), whereas the authors' code, ``lenscloth/RKD``
``metric/loss.py::AttentionTransfer`` and torchdistill ``ATLoss(mode='code')`` use the mean squared
difference. This module implements the latter, the mean squared difference, without beta: set the weight
in the total loss (the AT authors' code multiplies this mean form by beta/2 with beta = 1000). The teacher
is constant: no gradient flows into it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.losses.registry import register_loss


def attention_map(x: torch.Tensor, size: torch.Size | tuple[int, int] | None = None) -> torch.Tensor:
    """[N, C, H, W] -> [N, H'*W'] L2-normalised sum_c x_c^2, optionally resized to ``size`` before normalising."""
    attention = x.pow(2).sum(dim=1, keepdim=True)
    if size is not None and tuple(attention.shape[-2:]) != tuple(size):
        attention = F.interpolate(attention, size=tuple(size), mode="bilinear", align_corners=False)
    return F.normalize(attention.flatten(1), p=2, dim=1)


@register_loss("attention", inputs="maps",
               help="attention-map transfer (Zagoruyko & Komodakis 2017; Yu et al. 2019)")
class AttentionTransferLoss(nn.Module):
    def forward(self, student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_maps) != len(teacher_maps):
            raise ValueError(f"got {len(student_maps)} student maps but {len(teacher_maps)} teacher maps")
        if not student_maps:
            raise ValueError("AttentionTransferLoss needs at least one stage")
        losses = []
        for stage, (student, teacher) in enumerate(zip(student_maps, teacher_maps)):
            if student.dim() != 4 or teacher.dim() != 4:
                raise ValueError(f"stage {stage}: expected NCHW maps, got student {tuple(student.shape)} and "
                                 f"teacher {tuple(teacher.shape)}")
            if len(student) != len(teacher):
                raise ValueError(f"stage {stage}: student and teacher batch sizes differ: {len(student)} vs "
                                 f"{len(teacher)}")
            with torch.no_grad():
                target = attention_map(teacher.detach())
            losses.append((attention_map(student, teacher.shape[-2:]) - target).pow(2).mean())
        return torch.stack(losses).mean()

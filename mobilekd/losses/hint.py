"""FitNets hint loss on intermediate feature maps.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015, as used for
embedding distillation by Yu et al., "Learning Metrics from Teachers", CVPR 2019. For each matched stage l a
learned regressor r_l (a 1x1 convolution without bias, student_channels[l] -> teacher_channels[l]) maps the
student's feature map to the teacher's channel count, and

    L_hint = (1/L) * sum_l mean( (interp(r_l(S_l)) - T_l)^2 )

where the inner mean runs over batch, channels and positions, and interp is bilinear ``F.interpolate``
(align_corners=False) of the adapted student map to the teacher map's spatial size when the two differ (the
identity otherwise). A 1x1 convolution and bilinear resizing are both linear and act on different axes, so
resizing before or after the regressor gives the same result; resizing after it is what is computed here.
The teacher is constant: no gradient flows into it; the regressors are trained with the student (put this
module's parameters in the optimizer). Regressor weights start at U(-0.005, 0.005), as ``lenscloth/RKD``
``metric/loss.py::FitNet``. 2-D inputs [N, C] (e.g. embeddings) are treated as 1x1 maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.losses.registry import LossContext, register_loss


@register_loss("hint", inputs="maps",
               help="hint regression of feature maps through 1x1 adapters (Romero et al. 2015; Yu et al. 2019)")
class HintLoss(nn.Module):
    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]
        if len(self.student_channels) != len(self.teacher_channels):
            raise ValueError(f"student_channels has {len(self.student_channels)} stages but teacher_channels has "
                             f"{len(self.teacher_channels)}")
        if not self.student_channels:
            raise ValueError("HintLoss needs at least one stage")
        if any(c <= 0 for c in self.student_channels + self.teacher_channels):
            raise ValueError(f"channel counts must be positive, got {self.student_channels} -> "
                             f"{self.teacher_channels}")
        self.regressors = nn.ModuleList(nn.Conv2d(s, t, kernel_size=1, bias=False)
                                        for s, t in zip(self.student_channels, self.teacher_channels))
        for regressor in self.regressors:
            nn.init.uniform_(regressor.weight, -0.005, 0.005)

    @classmethod
    def from_context(cls, context: LossContext) -> "HintLoss":
        return cls(context.student_channels, context.teacher_channels)

    def forward(self, student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_maps) != len(teacher_maps):
            raise ValueError(f"got {len(student_maps)} student maps but {len(teacher_maps)} teacher maps")
        if len(student_maps) != len(self.regressors):
            raise ValueError(f"HintLoss was built for {len(self.regressors)} stages, got {len(student_maps)} maps")
        losses = []
        for stage, (regressor, student, teacher) in enumerate(zip(self.regressors, student_maps, teacher_maps)):
            if student.dim() == 2:
                student = student[:, :, None, None]
            if teacher.dim() == 2:
                teacher = teacher[:, :, None, None]
            if student.dim() != 4 or teacher.dim() != 4:
                raise ValueError(f"stage {stage}: expected NCHW (or NC) maps, got student {tuple(student.shape)} "
                                 f"and teacher {tuple(teacher.shape)}")
            if len(student) != len(teacher):
                raise ValueError(f"stage {stage}: student and teacher batch sizes differ: {len(student)} vs "
                                 f"{len(teacher)}")
            if student.shape[1] != self.student_channels[stage]:
                raise ValueError(f"stage {stage}: student map has {student.shape[1]} channels, expected "
                                 f"{self.student_channels[stage]}")
            if teacher.shape[1] != self.teacher_channels[stage]:
                raise ValueError(f"stage {stage}: teacher map has {teacher.shape[1]} channels, expected "
                                 f"{self.teacher_channels[stage]}")
            adapted = regressor(student)
            if adapted.shape[-2:] != teacher.shape[-2:]:
                adapted = F.interpolate(adapted, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
            losses.append((adapted - teacher.detach()).pow(2).mean())
        return torch.stack(losses).mean()

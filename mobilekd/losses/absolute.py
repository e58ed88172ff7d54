"""Absolute teacher loss.

Yu, Yazici, Liu, van de Weijer, Cheng, Ramisa, "Learning Metrics from Teachers: Compact Networks for Image
Embedding", CVPR 2019 (arXiv 1904.03624), Eq. "absolute teacher": the student regresses the teacher's
embedding of the same image,

    L_abs = (1/N) * sum_i || P(f_S(x_i)) - f_T(x_i) ||_2            (``squared=False``, the paper's form)
    L_abs = (1/N) * sum_i || P(f_S(x_i)) - f_T(x_i) ||_2^2          (``squared=True``)

where P is the identity when the dimensions match and otherwise a learned linear projection
student_dim -> teacher_dim followed by L2 normalisation (the teacher embedding is L2-normalised too). For unit
vectors ||a - b||^2 = 2 - 2 cos(a, b), so the squared form is the cosine loss of Beyer et al. up to scale.
The teacher is constant: no gradient flows into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.losses.registry import LossContext, Option, register_loss


@register_loss("absolute", inputs="embeddings", help="absolute teacher loss (Yu et al. 2019)",
               options=[Option("squared", bool, False, "squared L2 distance (the cosine loss up to scale)")])
class AbsoluteTeacherLoss(nn.Module):
    def __init__(self, student_dim: int, teacher_dim: int, squared: bool = False, eps: float = 1e-6):
        super().__init__()
        self.projection = (nn.Linear(student_dim, teacher_dim, bias=False)
                           if student_dim != teacher_dim else None)
        self.squared = squared
        self.eps = eps

    @classmethod
    def from_context(cls, context: LossContext, squared: bool = False) -> "AbsoluteTeacherLoss":
        return cls(context.student_dim, context.teacher_dim, squared=squared)

    def project(self, student: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return student
        return F.normalize(self.projection(student), dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        difference = self.project(student) - teacher.detach()
        if self.squared:
            return difference.pow(2).sum(dim=1).mean()
        return (difference.pow(2).sum(dim=1) + self.eps).sqrt().mean()

"""Relational knowledge distillation: distance-wise and angle-wise losses.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068); reference code
``lenscloth/RKD`` ``metric/loss.py`` (``RkdDistance``, ``RKdAngle``). The student's batch *structure* matches
the teacher's, so the embedding dimensions may differ (student [N, Ds], teacher [N, Dt]).

Distance-wise (RKD-D):

    psi_D(i, j) = || e_i - e_j ||_2 / mu,     mu = mean_{i != j} || e_i - e_j ||_2      (per network)
    L_D = (1/N^2) * sum_{i,j} SmoothL1(psi_D^S(i, j), psi_D^T(i, j))

Angle-wise (RKD-A), for every ordered triplet (i, j, k):

    psi_A(i, j, k) = < normalize(e_j - e_i), normalize(e_k - e_i) >     (cosine of the angle at vertex i)
    L_A = (1/N^3) * sum_{i,j,k} SmoothL1(psi_A^S(i, j, k), psi_A^T(i, j, k))

SmoothL1 is the Huber loss with beta = 1: 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise.

Reductions follow the official code's elementwise mean over the *full* N x N (resp. N x N x N) tensors:
the diagonal zeros of psi_D, and the psi_A entries with j == i or k == i (a normalised zero vector, so 0
for both networks), are included in the count. They add nothing to the sum, so they only rescale the loss
by a constant for a fixed N. The angle loss uses O(N^2 D + N^3) memory, like the official ``bmm``.

mu is the mean over the N(N-1) off-diagonal pairs. The official code averages the *positive* distances
(``d[d > 0].mean()``); the two agree unless two embeddings in the batch coincide. Distances are
sqrt(clamp(||e_i||^2 + ||e_j||^2 - 2 e_i.e_j, 1e-12)) with the diagonal set to 0 (as the official
``pdist``), so coincident embeddings give finite gradients. The teacher is constant: no gradient flows
into it. Both losses are invariant to scaling the embeddings; the angle loss also to translating them.
The official recipe weights them 1 * L_D + 2 * L_A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.losses.distances import check_embedding_pair, off_diagonal, pairwise_distances
from mobilekd.losses.registry import register_loss


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    check_embedding_pair(student, teacher, "relational losses")


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """psi_D: N x N Euclidean distances (zero diagonal) divided by their mean over the pairs i != j."""
    mask = off_diagonal(len(x), x.device)
    distances = pairwise_distances(x) * mask
    return distances / distances[mask].mean().clamp_min(1e-12)


def triplet_angles(x: torch.Tensor) -> torch.Tensor:
    """psi_A: N x N x N, [i, j, k] = cosine of the angle at e_i between e_j and e_k (0 if j == i or k == i)."""
    differences = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # [i, j] = normalize(e_j - e_i)
    return torch.bmm(differences, differences.transpose(1, 2))


@register_loss("rkd_distance", inputs="embeddings", help="RKD distance loss (Park et al. 2019)")
class RKDDistanceLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check(student, teacher)
        with torch.no_grad():
            target = normalized_distances(teacher.detach())
        return F.smooth_l1_loss(normalized_distances(student), target, reduction="mean", beta=1.0)


@register_loss("rkd_angle", inputs="embeddings", help="RKD angle loss (Park et al. 2019)")
class RKDAngleLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check(student, teacher)
        with torch.no_grad():
            target = triplet_angles(teacher.detach())
        return F.smooth_l1_loss(triplet_angles(student), target, reduction="mean", beta=1.0)

"""Distance-distribution KL distillation (registry name ``kl``, class ``DistanceKLLoss``).

Feng, Wang, Huang, Tang, Liu, "Unifying Specialist Image Embedding into Universal Image Embedding",
arXiv 2003.03701 (2020): a specialist teacher's "absolute distances between images" are turned into a
probability distribution and the student (the universal embedding) minimises the KL divergence to it.
For every anchor i of a batch of N, over the other N - 1 images j != i,

    p_ij = exp(-d^T_ij / tau) / sum_{l != i} exp(-d^T_il / tau)          (teacher)
    q_ij = exp(-d^S_ij / tau) / sum_{l != i} exp(-d^S_il / tau)          (student)
    L_KL = (1/N) * sum_i KL(p_i || q_i) = (1/N) * sum_i sum_{j != i} p_ij (log p_ij - log q_ij)

with d the Euclidean distance (``distance="euclidean"``) or 1 - cosine similarity (``distance="cosine"``),
computed within each network, so the dimensions may differ. The diagonal j == i is excluded: this is the
softmax with the diagonal logits masked to -inf, computed here on the N x (N - 1) off-diagonal entries
directly, so no 0 * log 0 terms (and no NaN gradients) arise. The teacher is constant. No tau^2 factor.

What the paper does not give (only its abstract is available to us, there is no official code): the
temperature, the distance, the batch composition and domain sampling. Choices here: tau = 0.1 by default
(a softmax temperature commonly used for unit-norm embeddings, e.g. UDON's; Euclidean distances between
L2-normalised embeddings lie in [0, 2], cosine distances in [0, 2] too, so tau = 0.1 gives a sharp but not
one-hot neighbour distribution); the loss is computed over whatever batch it receives, all anchors against
all other images of it. In a multi-specialist setup call it once per domain with that domain's sub-batch and
its specialist teacher, and weight the terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.losses.distances import check_embedding_pair, off_diagonal, pairwise_distances
from mobilekd.losses.registry import Option, register_loss

DISTANCES = ("euclidean", "cosine")


@register_loss("kl", inputs="embeddings", help="distance-distribution KL (Feng et al. 2020)",
               options=[Option("temperature", float, 0.1, "softmax temperature tau over the distances", above=0)])
class DistanceKLLoss(nn.Module):
    def __init__(self, temperature: float = 0.1, distance: str = "euclidean"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.distance = distance

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        if self.distance == "euclidean":
            return pairwise_distances(x)
        x = F.normalize(x, dim=1)
        return 1.0 - x @ x.t()

    def log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """N x (N - 1): log softmax_{j != i}(-d_ij / tau) for every anchor i."""
        n = len(x)
        logits = -self.distances(x)[off_diagonal(n, x.device)].view(n, n - 1) / self.temperature
        return F.log_softmax(logits, dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_embedding_pair(student, teacher, "DistanceKLLoss")
        with torch.no_grad():
            log_p = self.log_probabilities(teacher.detach())
        log_q = self.log_probabilities(student)
        # batchmean: sum_{i,j} p_ij (log p_ij - log q_ij) / N
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)

"""Batch geometry shared by the relational losses: shape checks, pairwise distances, the off-diagonal mask."""

from __future__ import annotations

import torch


def check_embedding_pair(student: torch.Tensor, teacher: torch.Tensor, loss_name: str) -> None:
    """The shape checks every (student, teacher) batch loss needs, with one clear message each."""
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"expected student [N, Ds] and teacher [N, Dt], got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    if len(student) != len(teacher):
        raise ValueError(f"student and teacher batch sizes differ: {len(student)} vs {len(teacher)}")
    if len(student) < 2:
        raise ValueError(f"{loss_name} needs at least 2 embeddings in the batch, got {len(student)}")


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """N x N Euclidean distances, sqrt(clamp(., 1e-12)) so the diagonal has a finite gradient."""
    squared = x.pow(2).sum(dim=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (x @ x.t())
    return d2.clamp_min(1e-12).sqrt()


def off_diagonal(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """N x N boolean mask of the pairs i != j."""
    return ~torch.eye(n, dtype=torch.bool, device=device)

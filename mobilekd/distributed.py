"""Multi-process distillation under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node N -m mobilekd.distill ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; every process
draws the same global P x K batch (same seed) and keeps its share ``batch[rank::world]``, so N processes
see what one process would, split N ways; DDP averages the gradients. Rank 0 alone evaluates and writes
checkpoints; the teacher cache is built in parallel chunks by all ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device: str) -> Context:
    """Join the process group torchrun describes (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Context(rank, world, local_rank)


class ShardedBatchSampler(Sampler):
    """This rank's share ``batch[rank::world]`` of every batch of ``sampler``."""

    def __init__(self, sampler, context: Context):
        self.sampler, self.context = sampler, context

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.context.rank :: self.context.world]

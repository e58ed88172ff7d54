"""One training step: the teacher's targets for a batch (cached, or from a live teacher with or without its
feature maps), output-space mixup, every active loss, and the optimiser update.

:class:`TrainStep` is usable without a run: give it a student, the losses (``builders.build_losses``) and an
optimiser, and call it with a :class:`~mobilekd.engine.builders.Domain` and a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mobilekd.engine.builders import Domain
from mobilekd.errors import MobileKDError
from mobilekd.losses import get_loss
from mobilekd.models import EmbeddingNet


class StepModule(torch.nn.Module):
    """Student + every domain's losses in one module, so one DistributedDataParallel wrapper averages the
    gradients of the student and of the losses' own parameters (projections, proxies, hint adapters)."""

    def __init__(self, student: EmbeddingNet, losses: torch.nn.ModuleDict):
        super().__init__()
        self.student, self.losses = student, losses

    def forward(self, domain: str, student_in, labels, teacher_out, teacher_maps, stages) -> dict:
        if stages is not None:
            embeddings, student_maps = self.student(student_in, stages)
        else:
            embeddings, student_maps = self.student(student_in), None
        originals = embeddings[: len(labels)]  # rows past len(labels) are mixed images
        labeled = labels >= 0
        parts = {}
        for name, loss in self.losses[domain].items():
            inputs = get_loss(name).inputs  # what each kind of loss is called with: see mobilekd.losses.registry
            if inputs == "labels":
                if labeled.sum() > 1:
                    parts[name] = loss(originals[labeled], labels[labeled])
            elif inputs == "maps":
                parts[name] = loss(student_maps, teacher_maps)
            else:
                parts[name] = loss(embeddings, teacher_out)
        return parts


def cached_targets(domain: Domain, batch: dict, device: torch.device) -> torch.Tensor:
    """The teacher's embeddings of the batch's (image, view) pairs, read from the domain's teacher cache."""
    return domain.targets(batch["index"], batch["view"]).to(device)


@torch.no_grad()
def live_targets(domain: Domain, batch: dict, device: torch.device):
    """The live teacher on the batch's teacher inputs: (embeddings, feature maps at the domain's teacher
    stages, or None when no feature-map loss is on)."""
    teacher_in = batch["teacher"].to(device)
    if domain.feature_stages is not None:
        return domain.teacher.forward_with_intermediates(teacher_in, domain.feature_stages[1])
    return domain.teacher(teacher_in), None


def teacher_targets(domain: Domain, batch: dict, device: torch.device):
    """(teacher embeddings, teacher feature maps) of a batch; (None, None) for a domain without a teacher."""
    if domain.teacher is None:
        return None, None
    if domain.targets is not None:
        return cached_targets(domain, batch, device), None
    return live_targets(domain, batch, device)


def mix_inputs_and_targets(inputs: torch.Tensor, targets: torch.Tensor, alpha: float):
    """Output-space mixup (Laskar & Kannala, ACCV 2020): append one mixed image per image,
    x~ = lam x_i + (1 - lam) x_j, with the teacher target taken in the teacher's output space,
    t~ = normalise(lam t_i + (1 - lam) t_j) -- no new teacher query. lam ~ Beta(alpha, alpha), j a random
    partner. Returns the joint original + mixed inputs and targets."""
    count = len(inputs)
    lam = torch.distributions.Beta(alpha, alpha).sample((count,)).to(inputs.device)
    partner = torch.randperm(count, device=inputs.device)
    mixed_in = lam.view(-1, 1, 1, 1) * inputs + (1 - lam.view(-1, 1, 1, 1)) * inputs[partner]
    mixed_t = F.normalize(lam.view(-1, 1) * targets + (1 - lam.view(-1, 1)) * targets[partner], dim=1)
    return torch.cat([inputs, mixed_in]), torch.cat([targets, mixed_t])


class NonFiniteLoss(MobileKDError):
    """A loss term became nan/inf; raised before the update, so the weights are still the last good ones."""

    def __init__(self, names: list[str], value: float, step: int):
        super().__init__(f"loss term {', '.join(names)} became {value} at step {step}")
        self.names, self.value, self.step = names, value, step


@dataclass
class StepOutput:
    """What one step returns: the weighted total and each loss's unweighted value."""

    total: float
    parts: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.total, **self.parts}


class TrainStep:
    """Forward, loss, backward and update for one batch of one domain.

    ``module`` is a :class:`StepModule` (or its DistributedDataParallel wrapper); ``weights`` maps a loss name
    to its weight (``Config.loss_weight``)."""

    def __init__(self, module: torch.nn.Module, optimizer, scheduler, weight, device: torch.device,
                 mixup_alpha: float = 0.0, channels_last: bool = False):
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.weight, self.device = weight, device
        self.mixup_alpha, self.channels_last = mixup_alpha, channels_last

    def student_inputs(self, batch: dict) -> torch.Tensor:
        student_in = batch["student"].to(self.device, non_blocking=True)
        if self.channels_last:
            student_in = student_in.contiguous(memory_format=torch.channels_last)
        return student_in

    def losses(self, domain: Domain, batch: dict) -> dict[str, torch.Tensor]:
        """Every active loss of ``domain`` on ``batch`` (unweighted), with gradients."""
        student_in = self.student_inputs(batch)
        labels = batch["label"].to(self.device)
        teacher_out, teacher_maps = teacher_targets(domain, batch, self.device)
        if self.mixup_alpha > 0 and teacher_out is not None:
            student_in, teacher_out = mix_inputs_and_targets(student_in, teacher_out, self.mixup_alpha)
        stages = domain.feature_stages[0] if domain.feature_stages is not None else None
        return self.module(domain.name, student_in, labels, teacher_out, teacher_maps, stages)

    def __call__(self, domain: Domain, batch: dict) -> StepOutput:
        parts = self.losses(domain, batch)
        total = sum(self.weight(name) * value for name, value in parts.items())
        bad = [name for name, value in parts.items() if not torch.isfinite(value)]
        if bad:  # stop before the update: the last checkpoint on disk stays the last good one
            raise NonFiniteLoss(bad, parts[bad[0]].item(), self.scheduler.last_epoch + 1)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return StepOutput(total.item(), {k: v.item() for k, v in parts.items()})

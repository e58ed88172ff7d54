"""Embedding transformations T: a gallery model's space -> the query (student) model's space, and their fitting.

Following Linial et al., "Asymmetric Image Retrieval with Cross Model Compatible Ensembles" (arXiv 2303.17531,
WACV 2024; no official code, see ../shared/notes/methods.md s. 3): a linear map or a 2-layer MLP per gallery
model ``G_i``, trained on the train split with every model frozen, maps ``G_i``'s embedding of an image into
the query model's space (model-to-model variant: only the gallery side moves, so the phone's latency is
unchanged). Loss, per batch of B images with query embeddings q and transformed gallery embeddings
t = normalize(T(g)):

    L = mean_b (1 - cos(t_b, q_b))  +  kl_weight * KL( softmax(q q^T / tau) || softmax(t q^T / tau) )

i.e. a cosine regression onto the student's embedding of the same image, plus (optional, ``--kl-weight``) a KL
between the in-batch similarity distributions of the student and of the transformed gallery. The paper's exact
losses and weights are unverified (it also names a dual classification loss through a shared head, not
implemented here). Linear heads start from the ridge least-squares solution.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilekd.data.embeddings_npz import check_embeddings
from mobilekd.errors import MobileKDError
from mobilekd.io import atomic_path, write_json

COMPAT_FORMAT = "mobilekd-compat/1"  # every file compat writes (transformations, manifest, results)
HEADS = ("linear", "mlp")


@dataclass
class FitConfig:
    """Hyper-parameters of ``fit_transform`` (the ``fit`` subcommand's flags of the same names)."""

    head: str = "linear"
    hidden: int = 1024
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    kl_weight: float = 0.0
    temperature: float = 0.05
    ridge: float = 1e-2
    seed: int = 0

    def validate(self) -> None:
        if self.head not in HEADS:
            raise MobileKDError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        for name in ("hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise MobileKDError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0 or self.temperature <= 0 or self.kl_weight < 0 or self.weight_decay < 0 or self.ridge < 0:
            raise MobileKDError("--lr and --temperature must be > 0; --kl-weight, --weight-decay, --ridge >= 0")


class EmbeddingTransform(nn.Module):
    """A gallery -> query transformation: Linear, or Linear-BN-ReLU-Linear; outputs are L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int, head: str = "linear", hidden: int = 1024):
        super().__init__()
        self.in_dim, self.out_dim, self.head, self.hidden = in_dim, out_dim, head, hidden
        if head == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim))
        elif head == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, out_dim))
        else:
            raise MobileKDError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")

    def forward(self, x):
        if x.shape[-1] != self.in_dim:
            raise MobileKDError(f"this transformation takes {self.in_dim}-d gallery embeddings, got "
                                f"{x.shape[-1]}-d")
        return nn.functional.normalize(self.net(x), dim=-1)


def make_transform(in_dim: int, out_dim: int, head: str = "linear", hidden: int = 1024) -> EmbeddingTransform:
    return EmbeddingTransform(in_dim, out_dim, head, hidden)


def compat_loss(transformed, query, kl_weight: float = 0.0, temperature: float = 0.05):
    """(total, cosine term, KL term): see the module docstring."""
    cosine = (1.0 - (transformed * query).sum(dim=1)).mean()
    kl = torch.zeros((), dtype=cosine.dtype)
    if kl_weight > 0 and len(query) > 1:
        target = torch.softmax(query @ query.T / temperature, dim=1)
        log_pred = torch.log_softmax(transformed @ query.T / temperature, dim=1)
        kl = nn.functional.kl_div(log_pred, target, reduction="batchmean")
    return cosine + kl_weight * kl, cosine, kl


def _ridge_init(model: EmbeddingTransform, g: torch.Tensor, q: torch.Tensor, ridge: float) -> None:
    """Set a linear head to the ridge least-squares solution: the closed-form start for the cosine objective."""
    ones = torch.ones(len(g), 1)
    x = torch.cat([g, ones], dim=1).double()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, x.T @ q.double())
    with torch.no_grad():
        model.net[0].weight.copy_(w[:-1].T.float())
        model.net[0].bias.copy_(w[-1].float())


def fit_transform(gallery, query, config: FitConfig | None = None, name: str = "gallery"):
    """Train T: gallery [N, Dg] -> query space [N, Dq] (same images, same order). Returns (T, stats)."""
    config = config or FitConfig()
    config.validate()
    gallery = check_embeddings(gallery, name)
    query = check_embeddings(query, "query")
    if len(gallery) != len(query):
        raise MobileKDError(f"{name}: {len(gallery)} gallery embeddings but {len(query)} query embeddings: "
                            "a transformation is fitted on the same images embedded by both models")
    if len(gallery) < 2:
        raise MobileKDError("fitting a transformation needs at least 2 images")
    torch.manual_seed(config.seed)
    g, q = torch.from_numpy(gallery), torch.from_numpy(query)
    model = make_transform(g.shape[1], q.shape[1], config.head, config.hidden)
    if config.head == "linear":
        _ridge_init(model, g, q, config.ridge)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(g) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(g), generator=generator)
        totals = np.zeros(3)
        for start in range(0, len(g), config.batch_size):
            batch = order[start:start + config.batch_size]
            if config.head == "mlp" and len(batch) < 2:  # BatchNorm needs two rows
                continue
            loss, cosine, kl = compat_loss(model(g[batch]), q[batch], config.kl_weight, config.temperature)
            if not torch.isfinite(loss):
                raise MobileKDError(f"{name}: the transformation's loss became non-finite at epoch {epoch + 1}; "
                                    "lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals += np.array([loss.item(), cosine.item(), kl.item()]) * len(batch)
        if epoch == 0 or epoch + 1 == config.epochs or (epoch + 1) % 10 == 0:
            history.append({"epoch": epoch + 1, "loss": totals[0] / len(g), "cosine_loss": totals[1] / len(g),
                            "kl": totals[2] / len(g)})
    model.eval()
    with torch.no_grad():
        cos = (model(g) * q).sum(dim=1)
    stats = {"train_images": len(g), "train_mean_cosine": float(cos.mean()), "history": history}
    return model, stats


def apply_transform(transform: EmbeddingTransform, embeddings, name: str = "gallery") -> np.ndarray:
    """T(embeddings) as float32 [N, Dq]; ``embeddings`` must have the dims T was fitted on."""
    x = check_embeddings(embeddings, name)
    if x.shape[1] != transform.in_dim:
        raise MobileKDError(f"{name} gives {x.shape[1]}-d embeddings but its transformation was fitted on "
                            f"{transform.in_dim}-d ones: wrong model or wrong file for this slot")
    transform.eval()
    with torch.no_grad():
        return transform(torch.from_numpy(x)).numpy().astype(np.float32)


def save_transform(transform: EmbeddingTransform, path: str | Path, meta: dict) -> Path:
    """``path.safetensors`` + ``path.json``, each written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in transform.state_dict().items()}
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(state, tmp)
    write_json(path.with_suffix(".json"), {"format": COMPAT_FORMAT, "head": transform.head,
                                           "in_dim": transform.in_dim, "out_dim": transform.out_dim,
                                           "hidden": transform.hidden, **meta})
    return path.with_suffix(".safetensors")


def load_transform(path: str | Path):
    """(transformation, its ``.json`` metadata) as written by ``save_transform``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not meta_path.is_file() or not weights_path.is_file():
        raise MobileKDError(f"transformation {path.with_suffix('')} needs both .safetensors and .json")
    meta = json.loads(meta_path.read_text())
    transform = make_transform(int(meta["in_dim"]), int(meta["out_dim"]), meta["head"], int(meta.get("hidden", 1024)))
    try:
        transform.load_state_dict(load_file(str(weights_path)))
    except (RuntimeError, OSError) as error:
        raise MobileKDError(f"{weights_path}: cannot load the transformation ({error})") from None
    transform.eval()
    return transform, meta

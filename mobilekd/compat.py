"""Compatible embeddings: asymmetric retrieval, cross-model compatible ensembles, gallery rejection, upgrades.

Mobile retrieval is asymmetric: the gallery is embedded once, on a server, by big models; queries are embedded
on the phone by the small student. Following Linial et al., "Asymmetric Image Retrieval with Cross Model
Compatible Ensembles" (arXiv 2303.17531, WACV 2024; no official code, see ../shared/notes/methods.md s. 3):

* **Embedding transformations** ``T_i``: a linear map or a 2-layer MLP per gallery model ``G_i``, trained on the
  train split with every model frozen, maps ``G_i``'s embedding of an image into the query (student) model's
  space (model-to-model variant: only the gallery side moves, so the phone's latency is unchanged). Loss, per
  batch of B images with query embeddings q and transformed gallery embeddings t = normalize(T(g)):

      L = mean_b (1 - cos(t_b, q_b))  +  kl_weight * KL( softmax(q q^T / tau) || softmax(t q^T / tau) )

  i.e. a cosine regression onto the student's embedding of the same image, plus (optional, ``--kl-weight``)
  a KL between the in-batch similarity distributions of the student and of the transformed gallery. The
  paper's exact losses and weights are unverified (it also names a dual classification loss through a
  shared head, not implemented here). Linear heads start from the ridge least-squares solution.
* **Ensemble gallery**: e_j = normalize(mean_i t_ij) over the N >= 2 transformed embeddings of gallery image j.
* **Uncertainty** of gallery image j: u_j = (1/N) sum_i ||t_ij - m_j||^2 with m_j = mean_i t_ij (not
  re-normalised) -- the variance of the N unit vectors, equal to 1 - ||m_j||^2 and to half the mean squared
  pairwise distance (1/(2N^2)) sum_{i,k} ||t_ij - t_kj||^2.
* **Rejection curve**: remove the ``round(f * G)`` most uncertain gallery images (ties: lower index kept) and
  measure asymmetric retrieval of *all* queries against the remaining gallery. A query's own image never
  counts (leave-one-out); a query left without any same-class gallery image (its whole class rejected) is
  left out of the means, exactly as ``mobilekd.metrics.retrieval_metrics`` does -- the number of scored
  queries is reported as ``queries`` next to every point. A random-rejection baseline (mean over seeds) is
  reported at the same fractions.
* **Upgrade check**: old vs new query model on the test split: R@1 of old->old, new->new and new queries
  against the old gallery. Verdict (the backward-compatibility criterion of Shen et al., BCT, CVPR 2020, with
  a tolerance): ``compatible: no re-index needed`` iff dims match and R@1(new->old) >= R@1(old->old) - tol
  (``--tolerance``, default 0 points), else ``re-index required``.
* **Student -> teacher**: a student distilled with the absolute teacher loss is trained so that
  P(f_S(x)) ~ f_T(x); its queries are checked directly against the teacher's gallery (P = identity when
  dims match, else the absolute loss's projection read from the run's ``train_state.pt``).

All metrics go through ``mobilekd.metrics.retrieval_metrics`` (the code behind ``benchmarks.recall``).

CLI::

    python -m mobilekd.compat embed MODEL --data DATA [--split all] [--size S] --out FILE.npz
    python -m mobilekd.compat fit --query STUDENT --gallery G1 G2 ... --data DATA [--head linear|mlp] [--out DIR]
    python -m mobilekd.compat evaluate --transforms DIR --data DATA [--reject 0,5,10,20,30] [--out DIR]
    python -m mobilekd.compat upgrade --old A --new B --data DATA [--tolerance 0] [--out DIR]
    python -m mobilekd.compat teacher --student S [S ...] --teacher T --data DATA [--out DIR]

Models are anything ``resolve_teacher`` accepts (names, checkpoint folders, ``.onnx``) or ``.npz`` embedding
files with arrays ``keys`` and ``embeddings`` (``labels`` optional) -- e.g. written by ``compat embed`` -- so
expensive gallery models are embedded once. Embeddings are matched to the data set by image key; a file
lacking keys, holding duplicates, or rows/keys of different counts is an error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import atomic_path, write_json

COMPAT_FORMAT = "mobilekd-compat/1"
MANIFEST = "compat.json"
DEFAULT_REJECT = (0.0, 0.05, 0.10, 0.20, 0.30)
HEADS = ("linear", "mlp")


# ------------------------------------------------------------------------------------------ embeddings


@dataclass
class EmbeddingSet:
    """One model's L2-normalised embeddings of a list of images, in ``keys`` order."""

    name: str
    keys: list[str]
    embeddings: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self):
        self.embeddings = check_embeddings(self.embeddings, self.name)
        self.keys = [str(k) for k in self.keys]
        if len(self.keys) != len(self.embeddings):
            raise MobileKDError(f"{self.name}: {len(self.embeddings)} embeddings but {len(self.keys)} image ids")
        if len(set(self.keys)) != len(self.keys):
            dup = next(k for k, c in _counts(self.keys).items() if c > 1)
            raise MobileKDError(f"{self.name}: image id {dup!r} occurs more than once")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def _counts(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def check_embeddings(x, name: str = "embeddings") -> np.ndarray:
    """float32 [N, D], finite, no all-zero rows; returned L2-normalised."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MobileKDError(f"{name}: embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise MobileKDError(f"{name}: {int(bad.sum())} embedding(s) contain NaN or infinite values "
                            f"(first at row {int(np.argmax(bad))})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise MobileKDError(f"{name}: {int((norms == 0).sum())} embedding(s) are all zeros "
                            f"(first at row {int(np.argmax(norms[:, 0] == 0))})")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_aligned(reference: EmbeddingSet, others: list[EmbeddingSet]) -> None:
    """Every set must embed the same images, in the same order, as ``reference`` (checked by id)."""
    for other in others:
        if len(other.keys) != len(reference.keys):
            raise MobileKDError(f"{other.name} has {len(other.keys)} embeddings but {reference.name} has "
                                f"{len(reference.keys)}: both must embed the same images")
        if other.keys != reference.keys:
            i = next(i for i, (a, b) in enumerate(zip(reference.keys, other.keys)) if a != b)
            what = "in a different order" if set(other.keys) == set(reference.keys) else "different images"
            raise MobileKDError(f"{other.name} and {reference.name} embed {what}: image #{i} is "
                                f"{other.keys[i]!r} vs {reference.keys[i]!r}")


def read_embedding_file(path: str | Path) -> EmbeddingSet:
    """An ``.npz`` with ``keys`` [N] and ``embeddings`` [N, D] (``labels`` [N] optional)."""
    path = Path(path)
    if not path.is_file():
        raise MobileKDError(f"embeddings file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "keys" not in data or "embeddings" not in data:
                raise MobileKDError(f"{path}: expected an .npz with arrays 'keys' and 'embeddings' "
                                    f"(found {', '.join(data.files) or 'none'})")
            keys, embeddings = data["keys"], data["embeddings"]
            labels = data["labels"] if "labels" in data else None
    except (OSError, ValueError) as error:
        raise MobileKDError(f"{path}: not a readable .npz ({error})") from None
    if len(keys) != len(embeddings):
        raise MobileKDError(f"{path}: {len(embeddings)} embeddings but {len(keys)} keys")
    return EmbeddingSet(str(path), keys.tolist(), embeddings, labels)


def select_images(embeddings: EmbeddingSet, keys: list[str]) -> EmbeddingSet:
    """The rows for ``keys`` (by image id), in that order; every key must be present."""
    index = {k: i for i, k in enumerate(embeddings.keys)}
    missing = [k for k in keys if k not in index]
    if missing:
        raise MobileKDError(f"{embeddings.name} has no embedding for {len(missing)} of the {len(keys)} images "
                            f"(first {missing[0]!r}): it was computed for other images or another data set")
    rows = np.array([index[k] for k in keys], dtype=np.int64)
    labels = embeddings.labels[rows] if embeddings.labels is not None else None
    return EmbeddingSet(embeddings.name, list(keys), embeddings.embeddings[rows], labels)


def embed_model(spec: str, images, size: int | None = None, threads: int | None = None, batch_size: int = 64,
                progress: bool = False) -> EmbeddingSet:
    """``spec``'s embeddings of ``images`` (an ImageSet): looked up in an ``.npz`` or computed (view 0)."""
    if str(spec).lower().endswith(".npz"):
        return select_images(read_embedding_file(spec), images.keys)
    import torch

    from mobilekd.embed import embed_image_set
    from mobilekd.teachers import resolve_teacher

    if threads:
        torch.set_num_threads(threads)
    model = resolve_teacher(str(spec), size, threads)
    if getattr(model, "preprocess", None) is None:
        raise MobileKDError(f"{spec}: cannot embed images with this model")
    embeddings = embed_image_set(model, images, batch_size=batch_size, progress=progress, desc=f"embed {spec}")
    return EmbeddingSet(str(spec), images.keys, embeddings, np.asarray(images.labels))


def write_embedding_file(path: str | Path, embeddings: EmbeddingSet, extra: dict | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise MobileKDError(f"{path}: embedding files end in .npz")
    arrays = {"keys": np.array(embeddings.keys), "embeddings": embeddings.embeddings}
    if embeddings.labels is not None:
        arrays["labels"] = np.asarray(embeddings.labels)
    arrays["meta"] = np.array(json.dumps({"model": embeddings.name, **(extra or {})}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path


# ------------------------------------------------------------------------------------------ transformations


@dataclass
class FitConfig:
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


def _torch():
    import torch

    return torch


def make_transform(in_dim: int, out_dim: int, head: str = "linear", hidden: int = 1024):
    """A gallery -> query transformation: Linear, or Linear-BN-ReLU-Linear; outputs are L2-normalised."""
    torch = _torch()
    from torch import nn

    class EmbeddingTransform(nn.Module):
        def __init__(self):
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
            return torch.nn.functional.normalize(self.net(x), dim=-1)

    return EmbeddingTransform()


def compat_loss(transformed, query, kl_weight: float = 0.0, temperature: float = 0.05):
    """(total, cosine term, KL term): see the module docstring."""
    torch = _torch()
    cosine = (1.0 - (transformed * query).sum(dim=1)).mean()
    kl = torch.zeros((), dtype=cosine.dtype)
    if kl_weight > 0 and len(query) > 1:
        target = torch.softmax(query @ query.T / temperature, dim=1)
        log_pred = torch.log_softmax(transformed @ query.T / temperature, dim=1)
        kl = torch.nn.functional.kl_div(log_pred, target, reduction="batchmean")
    return cosine + kl_weight * kl, cosine, kl


def fit_transform(gallery, query, config: FitConfig | None = None, name: str = "gallery"):
    """Train T: gallery [N, Dg] -> query space [N, Dq] (same images, same order). Returns (T, stats)."""
    torch = _torch()
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
    if config.head == "linear":  # ridge least squares: the closed-form start for the cosine objective
        ones = torch.ones(len(g), 1)
        x = torch.cat([g, ones], dim=1).double()
        gram = x.T @ x + config.ridge * torch.eye(x.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(gram, x.T @ q.double())
        with torch.no_grad():
            model.net[0].weight.copy_(w[:-1].T.float())
            model.net[0].bias.copy_(w[-1].float())
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


def apply_transform(transform, embeddings, name: str = "gallery") -> np.ndarray:
    torch = _torch()
    x = check_embeddings(embeddings, name)
    if x.shape[1] != transform.in_dim:
        raise MobileKDError(f"{name} gives {x.shape[1]}-d embeddings but its transformation was fitted on "
                            f"{transform.in_dim}-d ones: wrong model or wrong file for this slot")
    transform.eval()
    with torch.no_grad():
        return transform(torch.from_numpy(x)).numpy().astype(np.float32)


def save_transform(transform, path: str | Path, meta: dict) -> Path:
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


# ------------------------------------------------------------------------------------------ ensemble math


def _stack(transformed) -> np.ndarray:
    if len(transformed) < 2:
        raise MobileKDError(f"an ensemble needs at least 2 gallery models, got {len(transformed)}: "
                            "with one model use its transformed gallery directly")
    shapes = {np.shape(t) for t in transformed}
    if len(shapes) != 1:
        raise MobileKDError(f"transformed gallery embeddings differ in shape: {sorted(shapes)}")
    return np.stack([check_embeddings(t, f"transformed gallery {i}") for i, t in enumerate(transformed)])


def ensemble(transformed) -> np.ndarray:
    """normalize(mean_i t_i): the ensemble gallery from N >= 2 transformed gallery embeddings [G, D]."""
    return check_embeddings(_stack(transformed).mean(axis=0), "ensemble")


def uncertainty(transformed) -> np.ndarray:
    """Per gallery image: (1/N) sum_i ||t_i - mean||^2 (variance of the N unit vectors; 0 = all agree)."""
    stack = _stack(transformed)
    mean = stack.mean(axis=0)
    return ((stack - mean) ** 2).sum(axis=2).mean(axis=0)


def rejection_order(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean keep-mask: drops the round(fraction * G) highest scores (ties: the later index goes first)."""
    if not 0.0 <= fraction < 1.0:
        raise MobileKDError(f"rejection fraction must be in [0, 1), got {fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    n_reject = int(round(fraction * len(scores)))
    keep = np.ones(len(scores), dtype=bool)
    if n_reject:
        order = np.lexsort((-np.arange(len(scores)), -scores))  # most uncertain first; ties: higher index first
        keep[order[:n_reject]] = False
    return keep


def metrics_with_gallery_subset(query, labels, gallery, keep) -> dict:
    """Asymmetric retrieval (query i and gallery i are the same image; a query never retrieves its own image)
    of *all* queries against the kept gallery rows only, through ``retrieval_metrics`` in two parts: queries
    whose own image is kept (leave-one-out on the kept rows) and queries whose own image was rejected (plain
    search of the kept rows). Every metric is a mean over the queries with a same-class gallery image left,
    so the parts combine exactly by their ``queries`` counts."""
    from mobilekd.metrics import retrieval_metrics

    query = np.asarray(query, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    labels = np.asarray(labels)
    keep = np.asarray(keep, dtype=bool)
    if not (len(query) == len(gallery) == len(labels) == len(keep)):
        raise MobileKDError("queries, gallery, labels and keep-mask must describe the same images")
    if not keep.any():
        raise MobileKDError("every gallery image was rejected")
    parts = []
    for mask, loo in ((keep, True), (~keep, False)):
        if not mask.any():
            continue
        try:
            parts.append(retrieval_metrics(query[mask], labels[mask], gallery[keep], labels[keep], leave_one_out=loo))
        except MobileKDError as error:
            if "no query has a same-class image" not in str(error):
                raise
    if not parts:
        raise MobileKDError("no query has a same-class image left in the gallery")
    total = sum(p["queries"] for p in parts)
    combined = {k: sum(p[k] * p["queries"] for p in parts) / total for k in parts[0] if k != "queries"}
    combined["queries"] = int(total)
    return combined


def rejection_curve(query, labels, gallery, scores, fractions=DEFAULT_REJECT, random_seeds: int = 5) -> list[dict]:
    """R@1 / MAP@R vs fraction of the most uncertain gallery images removed, with a random baseline."""
    rows = []
    for fraction in fractions:
        keep = rejection_order(scores, fraction)
        m = metrics_with_gallery_subset(query, labels, gallery, keep)
        row = {"reject_fraction": float(fraction), "gallery_kept": int(keep.sum()), "R@1": m["R@1"],
               "MAP@R": m["MAP@R"], "queries": m["queries"]}
        if fraction > 0 and random_seeds:
            rand = []
            for seed in range(random_seeds):
                random_scores = np.random.default_rng(seed).random(len(scores))
                rand.append(metrics_with_gallery_subset(query, labels, gallery,
                                                        rejection_order(random_scores, fraction)))
            row["random_R@1"] = float(np.mean([r["R@1"] for r in rand]))
            row["random_MAP@R"] = float(np.mean([r["MAP@R"] for r in rand]))
        elif fraction == 0:
            row["random_R@1"], row["random_MAP@R"] = m["R@1"], m["MAP@R"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ workflows


def _slug(text: str) -> str:
    stem = Path(text.rstrip("/")).name or text
    stem = re.sub(r"\.(npz|onnx)$", "", stem)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "model"


def _check_gallery_list(gallery: list[str]) -> None:
    if len(gallery) < 2:
        raise MobileKDError(f"an ensemble needs at least 2 gallery models, got {len(gallery)}; for one gallery "
                            "model use `python -m benchmarks.recall QUERY --gallery-model G`")
    dup = [g for g, c in _counts(gallery).items() if c > 1]
    if dup:
        raise MobileKDError(f"gallery model {dup[0]} is listed twice: an ensemble of copies is an ensemble of one")


def _load_split(data: str, split: str, layout: str = "auto"):
    from mobilekd.data import load_image_set

    return load_image_set(data, split, layout)


def fit(query: str, gallery: list[str], data: str, out: str | Path, config: FitConfig | None = None,
        split: str = "train", query_size: int | None = None, gallery_size: int | None = None,
        threads: int | None = None, layout: str = "auto", progress: bool = False) -> dict:
    """Fit one transformation per gallery model onto ``query``'s space; write them and ``compat.json``."""
    config = config or FitConfig()
    config.validate()
    _check_gallery_list(gallery)
    images = _load_split(data, split, layout)
    q = embed_model(query, images, query_size, threads, progress=progress)
    gs = [embed_model(g, images, gallery_size, threads, progress=progress) for g in gallery]
    check_aligned(q, gs)
    out = Path(out)
    entries = []
    for i, (spec, g) in enumerate(zip(gallery, gs)):
        transform, stats = fit_transform(g.embeddings, q.embeddings, config, spec)
        name = f"{i}_{_slug(spec)}"
        save_transform(transform, out / name, {"gallery": spec, "gallery_size": gallery_size, "query": query,
                                               "query_size": query_size, "data": str(data), "split": split,
                                               "fit": asdict(config), "stats": stats})
        entries.append({"gallery": spec, "transform": name, "in_dim": g.dim, "out_dim": q.dim,
                        "train_mean_cosine": stats["train_mean_cosine"]})
    manifest = {"format": COMPAT_FORMAT, "query": query, "query_size": query_size, "gallery_size": gallery_size,
                "data": str(data), "split": split, "images": len(images), "query_dim": q.dim, "fit": asdict(config),
                "loss": "mean(1 - cos(normalize(T(g)), q)) + kl_weight * KL(softmax(qq^T/tau) || softmax(tq^T/tau))",
                "transforms": entries}
    write_json(out / MANIFEST, manifest)
    lines = [f"# Compatible-embedding transformations", "", f"query model `{query}` ({q.dim}-d), fitted on the "
             f"{split} split of `{data}` ({len(images)} images), head `{config.head}`, kl_weight {config.kl_weight}",
             "", "| gallery model | dims | train mean cosine to the query embedding |", "|---|---|---|"]
    lines += [f"| {e['gallery']} | {e['in_dim']} -> {e['out_dim']} | {e['train_mean_cosine']:.4f} |" for e in entries]
    _write_text(out / "fit.md", "\n".join(lines) + "\n")
    return manifest


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MobileKDError(f"{directory} holds no {MANIFEST}: fit transformations with `python -m mobilekd.compat fit`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != COMPAT_FORMAT:
        raise MobileKDError(f"{path}: unknown format {manifest.get('format')!r}")
    return manifest


def evaluate(transforms_dir: str | Path, data: str, split: str = "test", query: str | None = None,
             gallery: list[str] | None = None, reject=DEFAULT_REJECT, threads: int | None = None,
             layout: str = "auto", random_seeds: int = 5, progress: bool = False) -> dict:
    """Asymmetric retrieval on ``split``: every single transformed gallery model, the ensemble, rejection."""
    from mobilekd.metrics import retrieval_metrics

    manifest = read_manifest(transforms_dir)
    entries = manifest["transforms"]
    gallery = list(gallery) if gallery else [e["gallery"] for e in entries]
    _check_gallery_list(gallery)
    if len(gallery) != len(entries):
        raise MobileKDError(f"{transforms_dir} holds {len(entries)} transformations but {len(gallery)} gallery "
                            "models were given: one per transformation, in the fitted order")
    query = query or manifest["query"]
    images = _load_split(data, split, layout)
    labels = np.asarray(images.labels)
    q = embed_model(query, images, manifest.get("query_size"), threads, progress=progress)
    if q.dim != manifest["query_dim"]:
        raise MobileKDError(f"query model {query} gives {q.dim}-d embeddings; the transformations map into "
                            f"{manifest['query_dim']}-d")
    gs = [embed_model(g, images, manifest.get("gallery_size"), threads, progress=progress) for g in gallery]
    check_aligned(q, gs)
    rows, transformed = [], []
    rows.append({"name": f"query -> query ({_slug(query)}, symmetric)", "kind": "symmetric-query",
                 **retrieval_metrics(q.embeddings, labels)})
    for spec, g, entry in zip(gallery, gs, entries):
        transform, _ = load_transform(Path(transforms_dir) / entry["transform"])
        rows.append({"name": f"{_slug(spec)} -> {_slug(spec)} (symmetric)", "kind": "symmetric-gallery",
                     **retrieval_metrics(g.embeddings, labels)})
        if g.dim == q.dim:
            rows.append({"name": f"query -> {_slug(spec)} (raw)", "kind": "asymmetric-raw",
                         **retrieval_metrics(q.embeddings, labels, g.embeddings, labels, leave_one_out=True)})
        t = apply_transform(transform, g.embeddings, spec)
        transformed.append(t)
        rows.append({"name": f"query -> T({_slug(spec)})", "kind": "asymmetric-single", "gallery": spec,
                     **retrieval_metrics(q.embeddings, labels, t, labels, leave_one_out=True)})
    ens = ensemble(transformed)
    rows.append({"name": f"query -> ensemble of {len(gallery)}", "kind": "asymmetric-ensemble",
                 **retrieval_metrics(q.embeddings, labels, ens, labels, leave_one_out=True)})
    scores = uncertainty(transformed)
    curve = rejection_curve(q.embeddings, labels, ens, scores, reject, random_seeds)
    singles = [r for r in rows if r["kind"] == "asymmetric-single"]
    best = max(singles, key=lambda r: r["R@1"])
    ens_row = rows[-1]
    delta = ens_row["R@1"] - best["R@1"]
    verdict = (f"ensemble R@1 {ens_row['R@1']:.2f} vs best single gallery model ({best['gallery']}) "
               f"{best['R@1']:.2f}: {'+' if delta >= 0 else ''}{delta:.2f} points -- "
               + ("the ensemble beats the best single model" if delta > 0 else
                  "the ensemble does NOT beat the best single model"))
    return {"format": COMPAT_FORMAT, "kind": "compat-evaluate", "data": str(data), "split": split,
            "images": len(images), "classes": int(len(np.unique(labels))), "query": query, "gallery": gallery,
            "transforms": str(transforms_dir), "head": manifest["fit"]["head"], "rows": rows,
            "rejection": curve, "uncertainty": {"mean": float(scores.mean()), "median": float(np.median(scores)),
                                                "max": float(scores.max())},
            "ensemble_vs_best_single_R@1": delta, "verdict": verdict}


def format_evaluation(result: dict) -> str:
    lines = [f"Asymmetric retrieval on {result['data']} ({result['split']} split, {result['images']} images, "
             f"{result['classes']} classes); queries: `{result['query']}`; head `{result['head']}`", "",
             "| retrieval | R@1 | R@2 | R@4 | R@8 | MAP@R |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['R@1']:.2f} | {r['R@2']:.2f} | {r['R@4']:.2f} | {r['R@8']:.2f} "
                     f"| {r['MAP@R']:.2f} |")
    lines += ["", f"**{result['verdict']}**", "", "Gallery rejection (ensemble gallery, most uncertain removed; "
              "random = mean of 5 random removals):", "",
              "| rejected | gallery kept | queries scored | R@1 | MAP@R | random R@1 | random MAP@R |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rejection"]:
        lines.append(f"| {100 * r['reject_fraction']:.0f} % | {r['gallery_kept']} | {r['queries']} | {r['R@1']:.2f} "
                     f"| {r['MAP@R']:.2f} | {r.get('random_R@1', float('nan')):.2f} "
                     f"| {r.get('random_MAP@R', float('nan')):.2f} |")
    return "\n".join(lines)


def upgrade_check(old: str, new: str, data: str, split: str = "test", tolerance: float = 0.0,
                  old_size: int | None = None, new_size: int | None = None, threads: int | None = None,
                  layout: str = "auto", progress: bool = False) -> dict:
    """Can the new query model search a gallery indexed by the old one?"""
    from mobilekd.metrics import retrieval_metrics

    if tolerance < 0:
        raise MobileKDError("--tolerance must be >= 0 (R@1 points)")
    images = _load_split(data, split, layout)
    labels = np.asarray(images.labels)
    o = embed_model(old, images, old_size, threads, progress=progress)
    n = embed_model(new, images, new_size, threads, progress=progress)
    check_aligned(o, [n])
    result = {"format": COMPAT_FORMAT, "kind": "compat-upgrade", "old": old, "new": new, "data": str(data),
              "split": split, "images": len(images), "tolerance": tolerance, "old_dim": o.dim, "new_dim": n.dim,
              "old->old": retrieval_metrics(o.embeddings, labels), "new->new": retrieval_metrics(n.embeddings, labels)}
    if o.dim != n.dim:
        result["new->old"] = result["old->new"] = None
        result["compatible"] = False
        result["verdict"] = (f"re-index required: the new model gives {n.dim}-d embeddings, the old gallery "
                             f"holds {o.dim}-d ones")
        return result
    cross = retrieval_metrics(n.embeddings, labels, o.embeddings, labels, leave_one_out=True)
    result["new->old"] = cross
    result["old->new"] = retrieval_metrics(o.embeddings, labels, n.embeddings, labels, leave_one_out=True)
    threshold = result["old->old"]["R@1"] - tolerance
    result["compatible"] = bool(cross["R@1"] >= threshold)
    result["verdict"] = (f"compatible: no re-index needed (new->old R@1 {cross['R@1']:.2f} >= old->old "
                         f"{result['old->old']['R@1']:.2f} - {tolerance:g})" if result["compatible"] else
                         f"re-index required (new->old R@1 {cross['R@1']:.2f} < old->old "
                         f"{result['old->old']['R@1']:.2f} - {tolerance:g})")
    return result


def format_upgrade(result: dict) -> str:
    lines = [f"Upgrade check on {result['data']} ({result['split']} split, {result['images']} images): "
             f"old `{result['old']}` ({result['old_dim']}-d), new `{result['new']}` ({result['new_dim']}-d)", "",
             "| queries -> gallery | R@1 | MAP@R |", "|---|---|---|"]
    for key in ("old->old", "new->new", "new->old", "old->new"):
        m = result.get(key)
        lines.append(f"| {key} | " + (f"{m['R@1']:.2f} | {m['MAP@R']:.2f} |" if m else "- | - |"))
    lines += ["", f"**{result['verdict']}**"]
    return "\n".join(lines)


def absolute_projection(student: str, teacher_dim: int):
    """The absolute teacher loss's learned student->teacher projection [teacher_dim, student_dim] from a
    distillation run's ``train_state.pt`` beside the checkpoint, or None."""
    path = Path(student)
    state_path = (path if path.is_dir() else path.parent) / "train_state.pt"
    if not state_path.is_file():
        return None
    torch = _torch()
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    candidates = [(k, v) for k, v in state.get("losses", {}).items()
                  if k.endswith("projection.weight") and v.ndim == 2 and v.shape[0] == teacher_dim]
    candidates.sort(key=lambda kv: "absolute" not in kv[0])
    return (candidates[0][0], candidates[0][1].float().numpy()) if candidates else None


def teacher_check(students: list[str], teacher: str, data: str, split: str = "test",
                  teacher_size: int | None = None, threads: int | None = None, layout: str = "auto",
                  progress: bool = False) -> dict:
    """Student -> teacher-gallery R@1 for distilled students (direct, no fitted transformation)."""
    from mobilekd.metrics import retrieval_metrics

    images = _load_split(data, split, layout)
    labels = np.asarray(images.labels)
    t = embed_model(teacher, images, teacher_size, threads, progress=progress)
    result = {"format": COMPAT_FORMAT, "kind": "compat-teacher", "teacher": teacher, "data": str(data),
              "split": split, "images": len(images), "teacher->teacher": retrieval_metrics(t.embeddings, labels),
              "students": []}
    for spec in students:
        s = embed_model(spec, images, None, threads, progress=progress)
        check_aligned(t, [s])
        row = {"student": spec, "dim": s.dim, "student->student": retrieval_metrics(s.embeddings, labels)}
        if s.dim == t.dim:
            row["via"], query = "identity (same dims)", s.embeddings
        else:
            found = absolute_projection(spec, t.dim) if not spec.lower().endswith(".npz") else None
            if found is None or found[1].shape[1] != s.dim:
                row["via"], query = f"none: {s.dim}-d student vs {t.dim}-d teacher and no absolute-loss projection", None
            else:
                row["via"], query = f"absolute-loss projection `{found[0]}`", check_embeddings(s.embeddings @ found[1].T)
        row["student->teacher"] = (retrieval_metrics(query, labels, t.embeddings, labels, leave_one_out=True)
                                   if query is not None else None)
        result["students"].append(row)
    return result


def format_teacher(result: dict) -> str:
    tt = result["teacher->teacher"]
    lines = [f"Student -> teacher gallery on {result['data']} ({result['split']} split, {result['images']} images); "
             f"teacher `{result['teacher']}`: teacher->teacher R@1 {tt['R@1']:.2f}, MAP@R {tt['MAP@R']:.2f}", "",
             "| student | student->student R@1 | student->teacher R@1 | student->teacher MAP@R | query mapping |",
             "|---|---|---|---|---|"]
    for r in result["students"]:
        st = r["student->teacher"]
        lines.append(f"| {r['student']} | {r['student->student']['R@1']:.2f} | "
                     + (f"{st['R@1']:.2f} | {st['MAP@R']:.2f}" if st else "- | -") + f" | {r['via']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) / 100.0 for v in text.split(",") if v.strip()]
    except ValueError:
        raise MobileKDError(f"--reject takes comma-separated percentages, got {text!r}") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise MobileKDError(f"--reject percentages must be in [0, 100), got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mobilekd.compat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, split):
        p.add_argument("--data", required=True, help="data set (folder, zip, CUB/Cars/SOP layout)")
        p.add_argument("--split", default=split, choices=("train", "test", "all"))
        p.add_argument("--layout", default="auto")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
        p.add_argument("--out", help="output folder (JSON + Markdown)")
        p.add_argument("--progress", action="store_true")

    p = sub.add_parser("embed", help="embed a split once into an .npz (keys, embeddings, labels)")
    p.add_argument("model")
    common(p, "all")
    p.add_argument("--size", type=int, help="input size for model names/checkpoints")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("fit", help="fit gallery -> query transformations on the train split")
    p.add_argument("--query", required=True, help="query (student) model: checkpoint, name, .onnx or .npz")
    p.add_argument("--gallery", required=True, nargs="+", help="N >= 2 gallery models (.npz files recommended)")
    common(p, "train")
    p.add_argument("--head", default="linear", choices=HEADS)
    p.add_argument("--hidden", type=int, default=1024, help="MLP hidden width")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--kl-weight", type=float, default=0.0, help="weight of the in-batch similarity KL term")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query-size", type=int)
    p.add_argument("--gallery-size", type=int, help="input size for gallery model names (e.g. 160)")

    p = sub.add_parser("evaluate", help="asymmetric R@1 per gallery model, ensemble, rejection curve")
    p.add_argument("--transforms", required=True, help="folder written by `fit`")
    p.add_argument("--query", help="override the query model recorded by `fit` (e.g. an .npz)")
    p.add_argument("--gallery", nargs="+", help="override the gallery models recorded by `fit` (same order)")
    common(p, "test")
    p.add_argument("--reject", default="0,5,10,20,30", help="rejected gallery percentages")
    p.add_argument("--random-seeds", type=int, default=5, help="random-rejection baseline repeats (0 = off)")

    p = sub.add_parser("upgrade", help="does a new query model still work on the old model's gallery?")
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    common(p, "test")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed R@1 drop in points (default 0)")

    p = sub.add_parser("teacher", help="student -> teacher-gallery R@1 for distilled students")
    p.add_argument("--student", required=True, nargs="+")
    p.add_argument("--teacher", required=True)
    p.add_argument("--teacher-size", type=int)
    common(p, "test")
    return parser


def _emit(args, name: str, result: dict, text: str) -> None:
    print(text)
    if args.out:
        out = Path(args.out)
        write_json(out / f"{name}.json", result)
        _write_text(out / f"{name}.md", text + "\n")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads or None
    if threads:
        _torch().set_num_threads(threads)
    if args.command == "embed":
        if not args.out:
            raise MobileKDError("embed needs --out FILE.npz")
        images = _load_split(args.data, args.split, args.layout)
        emb = embed_model(args.model, images, args.size, threads, args.batch_size, args.progress)
        write_embedding_file(args.out, emb, {"data": args.data, "split": args.split, "size": args.size})
        print(f"{args.out}: {len(emb.keys)} images x {emb.dim}")
    elif args.command == "fit":
        config = FitConfig(args.head, args.hidden, args.epochs, args.batch_size, args.lr, args.weight_decay,
                           args.kl_weight, args.temperature, seed=args.seed)
        out = args.out or "runs/compat"
        manifest = fit(args.query, args.gallery, args.data, out, config, args.split, args.query_size,
                       args.gallery_size, threads, args.layout, args.progress)
        print((Path(out) / "fit.md").read_text().rstrip())
        print(f"transformations: {out}/ ({MANIFEST} + one .safetensors/.json per gallery model)")
        del manifest
    elif args.command == "evaluate":
        result = evaluate(args.transforms, args.data, args.split, args.query, args.gallery, _fractions(args.reject),
                          threads, args.layout, args.random_seeds, args.progress)
        _emit(args, "evaluate", result, format_evaluation(result))
    elif args.command == "upgrade":
        result = upgrade_check(args.old, args.new, args.data, args.split, args.tolerance, threads=threads,
                               layout=args.layout, progress=args.progress)
        _emit(args, "upgrade", result, format_upgrade(result))
    elif args.command == "teacher":
        result = teacher_check(args.student, args.teacher, args.data, args.split, args.teacher_size, threads,
                               args.layout, args.progress)
        _emit(args, "teacher", result, format_teacher(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

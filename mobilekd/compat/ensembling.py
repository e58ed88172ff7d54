"""Ensemble gallery, per-image uncertainty, and the gallery-rejection curve (Linial et al., arXiv 2303.17531).

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
"""

from __future__ import annotations

import numpy as np

from mobilekd.data.embeddings_npz import check_embeddings
from mobilekd.errors import MobileKDError
from mobilekd.metrics import retrieval_metrics

DEFAULT_REJECT = (0.0, 0.05, 0.10, 0.20, 0.30)


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

"""Retrieval metrics with exact faiss inner-product search (cosine on L2-normalised embeddings).

Protocol (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020): every test image queries all the
others (leave-one-out); for a query with R same-class images in the gallery,

* Recall@K    -- 1 if any of the K nearest shares the query's label (the DML "R@K"; R@1 = P@1);
* R-Precision -- (# same-class among the R nearest) / R;
* MAP@R       -- (1/R) * sum_{i<=R} P@i * rel(i), with P@i the precision of the i nearest.

Queries without a same-class gallery image are left out of the means. All values are percentages.
Asymmetric retrieval (queries embedded by one model, gallery by another, e.g. the student's queries
against a teacher-indexed gallery) is the same call with a different ``gallery``; when both sides embed the
same images in the same order, ``leave_one_out`` drops each query's own image from its results.
"""

from __future__ import annotations

import faiss
import numpy as np

from mobilekd.errors import MobileKDError

DEFAULT_KS = (1, 2, 4, 8)


def _as_float32(x) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise MobileKDError(f"embeddings must be a 2-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MobileKDError("embeddings contain NaN or infinite values")
    return x


def nearest_neighbors(query: np.ndarray, gallery: np.ndarray, k: int, leave_one_out: bool) -> np.ndarray:
    """Indices of the k most similar gallery rows per query (inner product), self excluded if asked."""
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    k_search = min(k + int(leave_one_out), len(gallery))
    _, neighbors = index.search(query, k_search)
    if leave_one_out:
        is_self = neighbors == np.arange(len(query))[:, None]
        # move the query's own index (wherever ties put it) to the end, keep the order of the rest
        order = np.argsort(is_self, axis=1, kind="stable")
        neighbors = np.take_along_axis(neighbors, order, axis=1)[:, : k_search - 1]
    return neighbors


def retrieval_metrics(query, query_labels, gallery=None, gallery_labels=None, ks=DEFAULT_KS,
                      leave_one_out: bool | None = None) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision (percent). ``gallery=None`` = symmetric leave-one-out retrieval."""
    return summarize(per_query_metrics(query, query_labels, gallery, gallery_labels, ks, leave_one_out))


def per_query_metrics(query, query_labels, gallery=None, gallery_labels=None, ks=DEFAULT_KS,
                      leave_one_out: bool | None = None) -> dict[str, np.ndarray]:
    """Each valid query's own R@K (0/1), AP@R and R-Precision (fractions, not percent), plus ``index`` (the
    query rows kept): the values whose means ``retrieval_metrics`` reports -- bootstrap intervals resample them."""
    query = _as_float32(query)
    query_labels = np.asarray(query_labels)
    if gallery is None:
        gallery, gallery_labels = query, query_labels
        leave_one_out = True if leave_one_out is None else leave_one_out
    gallery = _as_float32(gallery)
    gallery_labels = np.asarray(gallery_labels)
    if leave_one_out is None:
        leave_one_out = len(query) == len(gallery) and np.array_equal(query_labels, gallery_labels)
    if query.shape[1] != gallery.shape[1]:
        raise MobileKDError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}: "
                            "asymmetric retrieval needs compatible embeddings")
    if len(query) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise MobileKDError("number of embeddings and labels differ")
    if leave_one_out and len(query) != len(gallery):
        raise MobileKDError("leave-one-out needs queries and gallery to be the same images in the same order")

    classes, gallery_counts = np.unique(gallery_labels, return_counts=True)
    count_of = dict(zip(classes.tolist(), gallery_counts.tolist()))
    relevant = np.array([count_of.get(label, 0) for label in query_labels.tolist()]) - int(leave_one_out)
    valid = relevant > 0
    if not valid.any():
        raise MobileKDError("no query has a same-class image in the gallery")
    k = int(max(max(ks), relevant.max()))
    neighbors = nearest_neighbors(query, gallery, k, leave_one_out)
    matches = gallery_labels[neighbors] == query_labels[:, None]  # [Q, k]
    matches, relevant = matches[valid], relevant[valid]

    values = {f"R@{kk}": matches[:, :kk].any(axis=1) for kk in ks}
    columns = np.arange(1, matches.shape[1] + 1)
    within_r = columns[None, :] <= relevant[:, None]
    hits = matches & within_r
    precision_at_i = np.cumsum(hits, axis=1) / columns[None, :]
    values["MAP@R"] = (precision_at_i * hits).sum(axis=1) / relevant
    values["R-Precision"] = hits.sum(axis=1) / relevant
    values["index"] = np.flatnonzero(valid)
    return values


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
    """The percentages of ``per_query_metrics``' values (their means) and the number of queries."""
    results = {name: 100.0 * float(v.mean()) for name, v in values.items() if name != "index"}
    results["queries"] = int(len(values["index"]))
    return results


def bootstrap_ci(values: dict[str, np.ndarray], names=("R@1", "MAP@R"), resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (percent) of the means of per-query ``values``: the queries are drawn
    with replacement ``resamples`` times from a fixed seed, so the interval is the same on every run."""
    rng = np.random.default_rng(seed)
    n = len(values["index"])
    chunk = max(1, min(resamples, (1 << 24) // max(n, 1)))  # resampled index blocks of <= 16M entries
    means = {name: [] for name in names}
    for start in range(0, resamples, chunk):
        draw = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for name in names:
            means[name].append(np.asarray(values[name], dtype=np.float64)[draw].mean(axis=1))
    tail = 100.0 * (1.0 - level) / 2
    return {name: [100.0 * float(np.percentile(np.concatenate(m), tail)),
                   100.0 * float(np.percentile(np.concatenate(m), 100.0 - tail))] for name, m in means.items()}


def format_table(rows: dict[str, dict[str, float]], columns=("R@1", "R@2", "R@4", "R@8", "MAP@R")) -> str:
    """A Markdown table: one row per model."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{values[c]:.2f}" if isinstance(values.get(c), (int, float)) else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""The compat workflows, each embedding one data split and measuring with ``mobilekd.metrics.retrieval_metrics``.

* ``fit``: one transformation per gallery model into the query model's space (``transform.py``), written with
  a ``compat.json`` manifest.
* ``evaluate``: asymmetric retrieval of the query model against each transformed gallery model and their
  ensemble, and the rejection curve (``ensembling.py``).
* ``upgrade_check``: old vs new query model on the test split: R@1 of old->old, new->new and new queries
  against the old gallery. Verdict (the backward-compatibility criterion of Shen et al., BCT, CVPR 2020, with
  a tolerance): ``compatible: no re-index needed`` iff dims match and R@1(new->old) >= R@1(old->old) - tol
  (``--tolerance``, default 0 points), else ``re-index required``.
* ``teacher_check``: a student distilled with the absolute teacher loss is trained so that P(f_S(x)) ~ f_T(x);
  its queries are checked directly against the teacher's gallery (P = identity when dims match, else the
  absolute loss's projection, read with ``mobilekd.engine.load_teacher_projections`` from the run).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mobilekd.compat.ensembling import DEFAULT_REJECT, ensemble, rejection_curve, uncertainty
from mobilekd.compat.gallery import check_aligned, embed_model, load_split
from mobilekd.compat.report import format_fit, write_markdown
from mobilekd.compat.transform import COMPAT_FORMAT, FitConfig, apply_transform, fit_transform, load_transform, \
    save_transform
from mobilekd.data.embeddings_npz import check_embeddings
from mobilekd.errors import MobileKDError
from mobilekd.io import write_json
from mobilekd.metrics import retrieval_metrics

MANIFEST = "compat.json"


def _slug(text: str) -> str:
    stem = Path(text.rstrip("/")).name or text
    stem = re.sub(r"\.(npz|onnx)$", "", stem)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "model"


def _check_gallery_list(gallery: list[str]) -> None:
    if len(gallery) < 2:
        raise MobileKDError(f"an ensemble needs at least 2 gallery models, got {len(gallery)}; for one gallery "
                            "model use `python -m benchmarks.recall QUERY --gallery-model G`")
    dup = [g for g, c in Counter(gallery).items() if c > 1]
    if dup:
        raise MobileKDError(f"gallery model {dup[0]} is listed twice: an ensemble of copies is an ensemble of one")


def fit(query: str, gallery: list[str], data: str, out: str | Path, config: FitConfig | None = None,
        split: str = "train", query_size: int | None = None, gallery_size: int | None = None,
        threads: int | None = None, layout: str = "auto", progress: bool = False) -> dict:
    """Fit one transformation per gallery model onto ``query``'s space; write them, ``compat.json`` and
    ``fit.md``."""
    config = config or FitConfig()
    config.validate()
    _check_gallery_list(gallery)
    images = load_split(data, split, layout)
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
    write_markdown(out / "fit.md", format_fit(manifest))
    return manifest


def read_manifest(directory: str | Path) -> dict:
    """The ``compat.json`` that ``fit`` wrote in ``directory``."""
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
    manifest = read_manifest(transforms_dir)
    entries = manifest["transforms"]
    gallery = list(gallery) if gallery else [e["gallery"] for e in entries]
    _check_gallery_list(gallery)
    if len(gallery) != len(entries):
        raise MobileKDError(f"{transforms_dir} holds {len(entries)} transformations but {len(gallery)} gallery "
                            "models were given: one per transformation, in the fitted order")
    query = query or manifest["query"]
    images = load_split(data, split, layout)
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


def upgrade_check(old: str, new: str, data: str, split: str = "test", tolerance: float = 0.0,
                  old_size: int | None = None, new_size: int | None = None, threads: int | None = None,
                  layout: str = "auto", progress: bool = False) -> dict:
    """Can the new query model search a gallery indexed by the old one?"""
    if not 0 <= tolerance <= 100:  # also refuses NaN, which every comparison would silently fail
        raise MobileKDError(f"--tolerance must be in 0..100 (R@1 points), got {tolerance}")
    images = load_split(data, split, layout)
    labels = np.asarray(images.labels)
    o = embed_model(old, images, old_size, threads, progress=progress)
    n = embed_model(new, images, new_size, threads, progress=progress)
    check_aligned(o, [n])
    result = {"format": COMPAT_FORMAT, "kind": "compat-upgrade", "old": old, "new": new, "data": str(data),
              "split": split, "images": len(images), "tolerance": tolerance, "old_dim": o.dim, "new_dim": n.dim,
              "old_size": old_size, "new_size": new_size,
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


def absolute_projection(student: str, teacher_dim: int):
    """(state-dict name, [teacher_dim, student_dim] array) of the absolute teacher loss's learned
    student->teacher projection saved by the distillation run of checkpoint ``student``, or None."""
    from mobilekd.engine.checkpoint import load_teacher_projections

    path = Path(student)
    projections = load_teacher_projections(path if path.is_dir() else path.parent)
    fitting = [(name, weight.numpy()) for name, weight in projections.items() if weight.shape[0] == teacher_dim]
    return fitting[0] if fitting else None


def teacher_check(students: list[str], teacher: str, data: str, split: str = "test",
                  teacher_size: int | None = None, threads: int | None = None, layout: str = "auto",
                  progress: bool = False) -> dict:
    """Student -> teacher-gallery R@1 for distilled students (direct, no fitted transformation)."""
    images = load_split(data, split, layout)
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

"""The one parity core shared by export.onnx, export.tflite, export.coreml and export.check.

An exported file is judged by what an app does with it: embed images and search. On a held-out set of real
images (default: the test split of the data the student trained on) we embed with

* the float PyTorch student (the reference),
* the exported file, through its own runtime (ONNX Runtime, the LiteRT interpreter, Core ML on macOS),
* optionally the teacher (the server-side model whose gallery the app's queries must still find),

and report

* ``vs_float``: per-image cosine (mean, min, 1st percentile), max abs element difference, top-10 neighbour
  overlap (fraction of each image's 10 nearest neighbours, leave-one-out, that both models agree on), the
  noise-to-spread ratio (the export's squared error over the mean squared distance between the float
  embeddings of different images, ``noise_to_spread``) with that mean pairwise cosine, and Recall@1 of the
  exported model next to the float student's (``mobilekd.metrics.retrieval_metrics``);
* ``vs_teacher``: cross-model Recall@1 (exported-student queries against the teacher-embedded gallery of the
  same images, each query's own image left out) and mean cosine to the teacher -- only when the dims match;
  otherwise the report says why it does not apply and gives the teacher's own Recall@1 for context.

Gates: mean cosine, Recall@1 drop, top-10 neighbour overlap, noise-to-spread, optionally a minimum per-image
cosine (``--min-cos``); all configurable on the command line, their defaults per precision are ``DEFAULT_GATES``
(the one place they are written). Mean cosine alone is not enough: when a student's embeddings crowd together,
an error that keeps cosine at 0.99 still reorders neighbours (issue #14; ``benchmarks/results/gate_defaults/gate_defaults.md``).
Non-finite outputs always fail. A gate whose metric could not be computed (Recall@1 on unlabeled data) or means
nothing (top-10 overlap on so few images that any two lists agree past the gate) is reported as skipped, never
as passed silently.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mobilekd.data.image_sets import ImageSet, load_image_set, unreadable_reason
from mobilekd.data.view_dataset import unreadable_error
from mobilekd.data.views import render_evaluation
from mobilekd.errors import DataError, MobileKDError
from mobilekd.metrics import nearest_neighbors, retrieval_metrics
from mobilekd.preprocess import Preprocess

NEIGHBOURS = 10


@dataclass
class Gates:
    """Pass conditions for an exported file, against the float student."""

    min_mean_cos: float
    min_cos: float | None = None  # minimum per-image cosine
    max_r1_drop: float | None = None  # Recall@1 points the export may lose vs the float student
    min_topk_overlap: float | None = None  # mean top-10 neighbour agreement with the float student
    max_noise_ratio: float | None = None  # export error relative to the spread of the float embeddings

    def to_dict(self) -> dict:
        return asdict(self)


# The default gates per precision: the one definition (the neighbour and noise-to-spread values come from
# measured files: benchmarks/results/gate_defaults/gate_defaults.md).
DEFAULT_GATES = {
    "fp32": Gates(0.9999, min_topk_overlap=0.98, max_noise_ratio=1e-4),
    "fp16": Gates(0.999, min_topk_overlap=0.85, max_noise_ratio=0.002),
    "dynamic": Gates(0.99, max_r1_drop=1.0, min_topk_overlap=0.4, max_noise_ratio=0.05),
    "int8": Gates(0.99, max_r1_drop=1.0, min_topk_overlap=0.4, max_noise_ratio=0.05),
}


def gates_for(precision: str, **overrides: float | None) -> Gates:
    """The default gates of ``precision`` with any command-line overrides (``Gates`` field names; None =
    keep the default) applied."""
    return replace(DEFAULT_GATES[precision], **{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------------------- image data


def choose_images(images: ImageSet, limit: int, seed: int = 0, whole_classes: bool = True) -> ImageSet:
    """A deterministic subset of at most ``limit`` images. Labeled sets keep whole classes (Recall@1 needs
    every query's classmates), picked in a seeded random class order; unlabeled sets take a seeded sample."""
    if limit <= 0 or len(images) <= limit:
        return images
    rng = np.random.default_rng(seed)
    if whole_classes and images.labeled:
        chosen: list[int] = []
        for label in rng.permutation(images.num_classes):
            members = np.flatnonzero(images.labels == label)
            if chosen and len(chosen) + len(members) > limit:
                continue
            chosen.extend(members.tolist())
            if len(chosen) >= limit:
                break
        return images.subset(sorted(chosen), name=images.name)
    return images.subset(sorted(rng.choice(len(images), size=limit, replace=False).tolist()), name=images.name)


def render_images(images: ImageSet, preprocess: Preprocess) -> np.ndarray:
    """The evaluation view (``mobilekd.data.views.evaluation_view``: central crop, bilinear resize, normalise) of
    every image: float32 [N, 3, H, W], exactly what ``mobilekd.embed`` gives the float student."""
    out = np.empty((len(images), 3, preprocess.size, preprocess.size), dtype=np.float32)
    unreadable = []  # every broken file is reported at once, not one per run
    for i in range(len(images)):
        try:
            image = images.load_image(i)
        except DataError as error:
            unreadable.append(f"{images.name}\t{unreadable_reason(error)}")
            continue
        out[i] = render_evaluation(image, preprocess).numpy()
    if unreadable:
        raise unreadable_error(unreadable, None)
    return out


def calibration_images(preprocess: Preprocess, count: int, calib: str | None = None,
                       train_data: str | None = None, train_fraction: float = 0.5, seed: int = 0
                       ) -> tuple[np.ndarray, dict]:
    """``count`` real images for int8 calibration, rendered like the evaluation view, deterministic.

    Source: ``calib`` (any image folder / zip, all of it) or else the training split of the data the student
    trained on (``train_data``) -- never the parity (test) images.
    """
    if count < 1:
        raise MobileKDError(f"--calib-images must be >= 1, got {count}")
    if calib:
        root = Path(calib).expanduser()
        flat = root.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
        try:
            images = load_image_set(root, "all", layout="unlabeled" if flat else "auto", min_per_class=1)
        except DataError as error:  # the data set loader's words name --data; this is --calib
            raise DataError(f"--calib {calib}: {str(error).replace('--data', '--calib')}") from None
        source = str(calib)
    elif train_data:
        images = load_image_set(train_data, "train", train_fraction=train_fraction, min_per_class=1)
        source = f"{train_data} (train split)"
    else:
        raise MobileKDError("int8 needs calibration images: pass --calib DATA (the checkpoint's model.json "
                            "names no training data in config.data)")
    if len(images) < count:
        raise DataError(f"calibration data {source} has {len(images)} image(s), fewer than --calib-images "
                        f"{count}: give a larger --calib folder or lower --calib-images")
    chosen = choose_images(images, count, seed, whole_classes=False)
    return render_images(chosen, preprocess), {"images": len(chosen), "source": source, "seed": seed}


# ------------------------------------------------------------------------------------------- embeddings


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@torch.inference_mode()
def embed_torch(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(pixels[i:i + batch_size])).float().numpy()
           for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out).astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_normalize(a) * _normalize(b)).sum(axis=1)


def _r1(embeddings: np.ndarray, labels: np.ndarray, gallery: np.ndarray | None = None) -> float:
    if gallery is None:
        return float(retrieval_metrics(embeddings, labels, ks=(1,))["R@1"])
    return float(retrieval_metrics(embeddings, labels, gallery, labels, ks=(1,), leave_one_out=True)["R@1"])


def r1_hits(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query (leave-one-out over the same set): 1 if its nearest neighbour shares its label."""
    x = np.ascontiguousarray(_normalize(embeddings))
    return (np.asarray(labels)[nearest_neighbors(x, x, 1, True)[:, 0]] == np.asarray(labels)).astype(np.float64)


def paired_r1_change(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray) -> dict:
    """How many queries the exported file loses / gains at Recall@1 against the float student, and a 95 %
    interval of the drop from the paired per-query differences (normal approximation): a drop inside the
    interval's width is within the resampling noise of this parity set."""
    before, after = r1_hits(reference, labels), r1_hits(exported, labels)
    diff = (before - after) * 100
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {"r1_queries_lost": int(((before == 1) & (after == 0)).sum()),
            "r1_queries_gained": int(((before == 0) & (after == 1)).sum()),
            "r1_drop_ci95": [_round(diff.mean() - half, 3), _round(diff.mean() + half, 3)]}


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean fraction of each image's k nearest neighbours (itself excluded) that both embeddings agree on."""
    k = min(k, len(a) - 1)
    if k < 1:
        return float("nan")
    na = nearest_neighbors(np.ascontiguousarray(_normalize(a)), np.ascontiguousarray(_normalize(a)), k, True)
    nb = nearest_neighbors(np.ascontiguousarray(_normalize(b)), np.ascontiguousarray(_normalize(b)), k, True)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na.tolist(), nb.tolist())]))


def noise_to_spread(reference: np.ndarray, exported: np.ndarray) -> tuple[float, float]:
    """(noise-to-spread ratio, mean pairwise cosine of the float embeddings of different images).

    The ratio is mean_i ||e_exp_i - e_float_i||^2 / mean_{i != j} ||e_float_i - e_float_j||^2 on unit vectors,
    i.e. (1 - mean cos to float) / (1 - mean pairwise cos of the float embeddings): how large the export's error
    is next to the distances a search has to tell apart. A mean cosine of 0.997 is harmless when different
    images sit at cosine 0.3 (ratio 0.004) and reorders every neighbour when they crowd at 0.99 (ratio 0.3).
    """
    ref, exp = _normalize(reference).astype(np.float64), _normalize(exported).astype(np.float64)
    n = len(ref)
    noise = float(((ref - exp) ** 2).sum(axis=1).mean())
    total = ref.sum(axis=0)
    pairwise_cos = float((total @ total - (ref * ref).sum()) / (n * (n - 1)))
    spread = 2.0 * (1.0 - pairwise_cos)
    return (noise / spread if spread > 1e-12 else (0.0 if noise == 0 else float("inf"))), pairwise_cos


def _round(value, digits: int = 6):
    return None if value is None else round(float(value), digits)


@dataclass
class ParityData:
    """Rendered held-out images + labels + (optional) the teacher's embeddings of the same images."""

    pixels: np.ndarray  # [N, 3, H, W] float32, the student's preprocessing
    labels: np.ndarray | None  # None when unlabeled
    source: str
    teacher: np.ndarray | None = None
    teacher_name: str | None = None


def load_parity_data(data: str, preprocess: Preprocess, limit: int, split: str = "test",
                     train_fraction: float = 0.5, teacher=None, teacher_name: str | None = None,
                     seed: int = 0) -> ParityData:
    images = load_image_set(data, split, train_fraction=train_fraction)
    images = choose_images(images, limit, seed)
    if len(images) < 2:
        raise DataError(f"parity data {data} ({split} split) has {len(images)} image(s); need at least 2")
    labels = images.labels if images.labeled else None
    teacher_embeddings = None
    if teacher is not None:
        from mobilekd.inference import embed_image_set

        teacher_embeddings = np.asarray(embed_image_set(teacher, images, progress=False), dtype=np.float32)
    return ParityData(render_images(images, preprocess), labels, f"{data} ({split} split, {len(images)} images)",
                      teacher_embeddings, teacher_name)


def compute_parity(embed_exported: Callable[[np.ndarray], np.ndarray], student: torch.nn.Module,
                   data: ParityData, gates: Gates, float_embeddings: np.ndarray | None = None) -> dict:
    """Embed ``data`` with the exported file and the float student, compare, apply ``gates``.

    ``embed_exported`` takes float32 NCHW preprocessed images [N, 3, H, W] and returns [N, D] (any layout /
    quantization conversion is the runner's business). Returns the report stored in model.json ``parity``.
    """
    reference = embed_torch(student, data.pixels) if float_embeddings is None else float_embeddings
    start = time.perf_counter()
    exported = np.asarray(embed_exported(data.pixels), dtype=np.float32).reshape(len(data.pixels), -1)
    seconds = time.perf_counter() - start
    report: dict = {"scope": "runtime", "data": data.source, "images": int(len(data.pixels)),
                    "gates": gates.to_dict()}
    failures: list[str] = []
    if exported.shape != reference.shape:
        failures.append(f"output shape {list(exported.shape)} != float student's {list(reference.shape)}")
        report.update(passed=False, failures=failures, vs_float=None, vs_teacher=None)
        return report
    if not np.isfinite(exported).all():
        failures.append(f"{int((~np.isfinite(exported)).any(axis=1).sum())} image(s) give NaN/inf embeddings")
        report.update(passed=False, failures=failures, vs_float=None, vs_teacher=None)
        return report

    cos = _cosines(reference, exported)
    ratio, pairwise_cos = noise_to_spread(reference, exported)
    vs_float = {"mean_cos": _round(cos.mean()), "min_cos": _round(cos.min()),
                "p01_cos": _round(np.percentile(cos, 1)),
                "max_abs_diff": _round(np.abs(_normalize(reference) - _normalize(exported)).max(), 8),
                "top10_overlap": _round(neighbour_overlap(reference, exported), 4),
                "noise_ratio": _round(ratio, 8), "float_pairwise_cos": _round(pairwise_cos),
                "seconds_per_image": _round(seconds / len(exported), 6)}
    if data.labels is not None:
        vs_float["r1_float"] = _round(_r1(reference, data.labels), 3)
        vs_float["r1_exported"] = _round(_r1(exported, data.labels), 3)
        vs_float["r1_drop"] = _round(vs_float["r1_float"] - vs_float["r1_exported"], 3)
        vs_float.update(paired_r1_change(reference, exported, data.labels))
    report["vs_float"] = vs_float

    report["vs_teacher"] = _teacher_report(data, reference, exported)

    skipped = []
    if vs_float["mean_cos"] < gates.min_mean_cos:
        failures.append(f"mean cosine {vs_float['mean_cos']:.6f} < {gates.min_mean_cos}")
    if gates.min_cos is not None and vs_float["min_cos"] < gates.min_cos:
        failures.append(f"min cosine {vs_float['min_cos']:.6f} < {gates.min_cos}")
    overlap = vs_float["top10_overlap"]
    k = min(NEIGHBOURS, len(exported) - 1)
    floor = max(0, 2 * k - (len(exported) - 1)) / k  # two k-lists drawn from n - 1 images share this at least
    if gates.min_topk_overlap is not None and floor >= gates.min_topk_overlap:
        skipped.append(f"min_topk_overlap (only {len(exported)} parity images: any two top-{k} lists of them "
                       f"share at least {floor:.2f}, whatever the file does)")
    elif gates.min_topk_overlap is not None and not overlap >= gates.min_topk_overlap:
        failures.append(f"top-{NEIGHBOURS} neighbour overlap {overlap:.4f} < {gates.min_topk_overlap}: the file "
                        "reorders the float student's nearest neighbours")
    if gates.max_noise_ratio is not None and not ratio <= gates.max_noise_ratio:
        failures.append(f"noise-to-spread ratio {ratio:.4g} > {gates.max_noise_ratio}: the export's error is large "
                        f"next to the distances between different images (their mean float cosine "
                        f"{pairwise_cos:.4f})")
    if gates.max_r1_drop is not None:
        if "r1_drop" not in vs_float:
            skipped.append("max_r1_drop (parity data is unlabeled)")
        elif vs_float["r1_drop"] > gates.max_r1_drop:
            failures.append(f"Recall@1 drop {vs_float['r1_drop']:.2f} points > {gates.max_r1_drop} "
                            f"({vs_float['r1_float']:.2f} -> {vs_float['r1_exported']:.2f})")
    report["passed"] = not failures
    report["failures"] = failures
    if skipped:
        report["skipped_gates"] = skipped
    return report


def _teacher_report(data: ParityData, reference: np.ndarray, exported: np.ndarray) -> dict | None:
    if data.teacher is None:
        return None
    teacher = data.teacher
    out: dict = {"teacher": data.teacher_name, "teacher_dim": int(teacher.shape[1]),
                 "student_dim": int(exported.shape[1])}
    if data.labels is not None:
        out["r1_teacher"] = _round(_r1(teacher, data.labels), 3)
    if teacher.shape[1] != exported.shape[1]:
        out["applicable"] = False
        out["reason"] = (f"dims differ (student {exported.shape[1]}, teacher {teacher.shape[1]}): student queries "
                         "cannot search a teacher-embedded gallery; cross-model Recall@1 and cosine do not apply")
        return out
    out["applicable"] = True
    out["mean_cos_float"] = _round(_cosines(reference, teacher).mean())
    out["mean_cos_exported"] = _round(_cosines(exported, teacher).mean())
    if data.labels is not None:
        out["cross_r1_float"] = _round(_r1(reference, data.labels, teacher), 3)
        out["cross_r1_exported"] = _round(_r1(exported, data.labels, teacher), 3)
    return out


def structural_report(checks: dict[str, bool], details: dict, reason: str, missing: str) -> dict:
    """The parity entry for a file whose runtime cannot run here (Core ML off macOS): structure only, and
    no embedding number at all. ``missing`` says in a few words what is absent ("no Core ML runtime on
    Linux"); the verdict is printed as "structural check only (...)", never as a bare PASS."""
    failures = [name for name, ok in checks.items() if not ok]
    return {"scope": "structural", "passed": not failures, "failures": failures, "checks": checks,
            "structure": details, "runtime_missing": missing, "runtime_parity": f"not measured: {reason}",
            "vs_float": None, "vs_teacher": None}


def format_report(report: dict, title: str = "") -> str:
    """A short human-readable table of a parity report."""
    lines = [title] if title else []
    note = (report.get("source") or {}).get("note")
    if report.get("scope") == "structural":
        missing = report.get("runtime_missing", "runtime not available here")
        lines.append(f"  structural check only ({missing}): {'PASS' if report['passed'] else 'FAIL'} -- runtime "
                     f"parity not measured ({report['runtime_parity'].removeprefix('not measured: ')})")
        for name, ok in report["checks"].items():
            lines.append(f"    {'ok  ' if ok else 'FAIL'} {name}")
        lines += [f"    - {failure}" for failure in report.get("failures", []) if failure not in report["checks"]]
        lines += [f"  source: {note}"] if note else []
        return "\n".join(lines)
    lines.append(f"  data: {report.get('data')}")
    vf = report.get("vs_float")
    if vf:
        lines.append(f"  vs float: mean cos {vf['mean_cos']:.6f}  min cos {vf['min_cos']:.6f}  "
                     f"max|diff| {vf['max_abs_diff']:.2e}  top-10 overlap {vf['top10_overlap']:.3f}")
        if vf.get("noise_ratio") is not None:
            lines.append(f"            noise-to-spread {vf['noise_ratio']:.3g}  (float embeddings of different "
                         f"images: mean cos {vf['float_pairwise_cos']:.4f})")
        if "r1_float" in vf:
            change = ""
            if "r1_drop_ci95" in vf:
                low, high = vf["r1_drop_ci95"]
                change = (f"  (95% interval {low:+.2f} .. {high:+.2f}; queries lost {vf['r1_queries_lost']}, "
                          f"gained {vf['r1_queries_gained']})")
            lines.append(f"            R@1 float {vf['r1_float']:.2f}  exported {vf['r1_exported']:.2f}  "
                         f"drop {vf['r1_drop']:+.2f}{change}")
    vt = report.get("vs_teacher")
    if vt:
        if vt.get("applicable"):
            lines.append(f"  vs teacher: cross R@1 float {vt.get('cross_r1_float')}  exported "
                         f"{vt.get('cross_r1_exported')}  mean cos float {vt['mean_cos_float']:.4f}  "
                         f"exported {vt['mean_cos_exported']:.4f}")
        else:
            lines.append(f"  vs teacher: {vt['reason']} (teacher R@1 {vt.get('r1_teacher')})")
    lines += [f"  source: {note}"] if note else []
    lines.append(f"  gates {report['gates']}: {'PASS' if report['passed'] else 'FAIL'}")
    for failure in report.get("failures", []):
        lines.append(f"    - {failure}")
    return "\n".join(lines)


def resolve_data_path(value: str | None, checkpoint: Path) -> str | None:
    """A data path from the checkpoint's config: as written (relative to the working directory of the
    training run, usually the project root), else relative to the checkpoint folder."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists() or path.is_absolute():
        return str(path)
    beside = checkpoint / value
    return str(beside) if beside.exists() else str(path)

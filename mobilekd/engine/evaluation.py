"""Evaluation of a student on its domains' test splits (leave-one-out retrieval), with the teacher's own
metrics and, when the spaces match, student queries against the teacher's gallery.

Teachers are frozen, so the teacher's test pass (it costs as much as a few epochs of a small student) is done
once: saved beside the teacher targets (``teacher_test.npz`` in the teacher cache folder, or in the run folder
for a live teacher) with what it was made from, and reused by every run that shares them; a caller that trains
many runs in one process (``benchmarks.distill_cub``) may also pass a :class:`TeacherTestEmbeddings` to share it
in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from mobilekd.config import Config
from mobilekd.data.view_dataset import ViewDataset
from mobilekd.data.training import data_identity
from mobilekd.inference import embed_image_set
from mobilekd.engine.builders import Domain, log
from mobilekd.io import atomic_path
from mobilekd.teacher_cache import data_fingerprint, teacher_identity
from mobilekd.metrics import retrieval_metrics


class TeacherTestEmbeddings:
    """The primary domain's teacher embeddings of the test split, kept across runs, keyed by what determines
    them; only named teachers (weights from a package, not a file that could change on disk)."""

    def __init__(self):
        self._embeddings: dict[str, np.ndarray] = {}

    @staticmethod
    def key(config: Config) -> str | None:
        if not config.teacher or "," in config.teacher or Path(config.teacher).exists():
            return None
        return json.dumps([config.teacher, config.teacher_size, data_identity(config, "test")], sort_keys=True)

    def get(self, config: Config) -> np.ndarray | None:
        key = self.key(config)
        return self._embeddings.get(key) if key else None

    def put(self, config: Config, embeddings: np.ndarray) -> None:
        key = self.key(config)
        if key:
            self._embeddings[key] = embeddings


def teacher_test_identity(teacher, domain: Domain, config: Config) -> dict:
    """What determines a teacher's test-split embeddings: its weights (or file), preprocessing, the test images
    (keys, labels, file sizes) and how they are decoded (``preload``)."""
    description, sha = teacher_identity(teacher)
    return {"teacher": description, "teacher_sha256": sha, "preprocess": teacher.preprocess.to_dict(),
            "data": os.path.abspath(domain.data), "data_fingerprint": data_fingerprint(domain.test_images),
            "images": len(domain.test_images), "preload": config.preload}


def load_teacher_test(path: Path, identity: dict) -> np.ndarray | None:
    """The embeddings saved at ``path`` when they were made from ``identity``; None (with a message saying
    why, when a file is there) otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            embeddings, made_from = saved["embeddings"], json.loads(str(saved["identity"]))
    except (OSError, ValueError, KeyError) as error:
        log(f"teacher test embeddings {path} are unreadable ({error}): embedding the test split again")
        return None
    different = [key for key in identity if _canonical(made_from.get(key)) != _canonical(identity[key])]
    if different or embeddings.shape[0] != identity["images"]:
        log(f"teacher test embeddings {path} were made with another {', '.join(different) or 'shape'}: "
            "embedding the test split again")
        return None
    log(f"teacher test embeddings: reusing {path}")
    return embeddings


def save_teacher_test(path: Path, identity: dict, embeddings: np.ndarray) -> None:
    """Write the embeddings with their identity in one file, atomically (a run reading it meanwhile sees the
    old file or the new one); a folder that refuses it costs only the reuse."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, embeddings=embeddings, identity=np.array(json.dumps(identity, sort_keys=True)))
    except OSError as error:
        log(f"teacher test embeddings not saved to {path}: {error}")


def teacher_test_embeddings(teacher, domain: Domain, config: Config, device: torch.device) -> np.ndarray:
    """The teacher's embeddings of the domain's test split: reused from ``domain.test_cache`` when made from the
    same teacher, preprocessing and images, else embedded (minutes for thousands of images) and saved there."""
    path = domain.test_cache
    identity = teacher_test_identity(teacher, domain, config) if path is not None else None
    embeddings = load_teacher_test(path, identity) if path is not None else None
    if embeddings is None:
        embeddings = embed_image_set(teacher, domain.test_images, str(device), progress=config.progress,
                                     desc=f"eval teacher ({domain.name})", decoded=domain.test_set)
        if path is not None:
            save_teacher_test(path, identity, embeddings)
    return embeddings


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def evaluate_domain(student: torch.nn.Module, domain: Domain, config: Config, device: torch.device,
                    shared: TeacherTestEmbeddings | None = None) -> dict:
    """``{"test": student metrics}``, plus ``teacher`` and ``student_to_teacher`` for a teacher with pixels;
    ``shared`` (primary domain only) reuses a teacher test pass of another run."""
    c = config
    if domain.test_set is None:
        domain.test_set = ViewDataset(domain.test_images, {}, preload_side=c.preload, progress=c.progress)
    embeddings = embed_image_set(student, domain.test_images, str(device), progress=c.progress,
                                 desc=f"eval student ({domain.name})", decoded=domain.test_set)
    result = {"test": retrieval_metrics(embeddings, domain.test_images.labels)}
    teacher = domain.teacher
    if teacher is None or teacher.preprocess is None:
        return result
    if domain.test_teacher is None:
        domain.test_teacher = shared.get(c) if shared is not None else None
        if domain.test_teacher is None:
            domain.test_teacher = teacher_test_embeddings(teacher, domain, c, device)
            if shared is not None:
                shared.put(c, domain.test_teacher)
        domain.teacher_metrics = retrieval_metrics(domain.test_teacher, domain.test_images.labels)
    result["teacher"] = domain.teacher_metrics  # kept in the history, so a resumed run still reports it
    if domain.test_teacher.shape[1] == embeddings.shape[1]:  # directly compatible embeddings
        result["student_to_teacher"] = retrieval_metrics(embeddings, domain.test_images.labels,
                                                         domain.test_teacher, domain.test_images.labels)
    return result


def evaluate_domains(student: torch.nn.Module, domains: list[Domain], config: Config, device: torch.device,
                     shared: TeacherTestEmbeddings | None = None) -> dict:
    """The primary domain's metrics at the top level, every other domain's under its name."""
    result = {}
    for position, domain in enumerate(domains):
        metrics = evaluate_domain(student, domain, config, device, shared if position == 0 else None)
        if position == 0:
            result.update(metrics)
        else:
            result[domain.name] = metrics
    return result

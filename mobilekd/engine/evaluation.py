"""Evaluation of a student on its domains' test splits (leave-one-out retrieval), with the teacher's own
metrics and, when the spaces match, student queries against the teacher's gallery.

Teachers are frozen, so a caller that trains many runs against one teacher in one process (``benchmarks.
distill_cub``) may pass a :class:`TeacherTestEmbeddings` to share the teacher's test pass between them (it
costs as much as a few epochs of a small student).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mobilekd.config import Config
from mobilekd.data.view_dataset import ViewDataset
from mobilekd.data.training import data_identity
from mobilekd.inference import embed_image_set
from mobilekd.engine.builders import Domain
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
            domain.test_teacher = embed_image_set(teacher, domain.test_images, str(device), progress=c.progress,
                                                  desc=f"eval teacher ({domain.name})", decoded=domain.test_set)
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

"""The training loop shared by ``mobilekd.train`` (metric learning) and ``mobilekd.distill`` (+ teacher).

Per step: total = metric_weight * metric(student) + absolute_weight * L_abs + relative_weight * L_rel.
Per epoch: a checkpoint (``OUT/model.safetensors`` + ``model.json`` for users and exporters,
``OUT/train_state.pt`` for ``--resume``), evaluation every ``eval_every`` epochs, ``OUT/history.json``.
Batches, views and dropout are seeded per (seed, epoch), so a run resumed after a kill reaches the same
weights as one that never stopped (same device and thread count).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mobilekd.config import Config
from mobilekd.data.dataset import ViewDataset
from mobilekd.data.datasets import load_image_set
from mobilekd.data.sampler import PKBatchSampler
from mobilekd.data.views import Degradation
from mobilekd.embed import embed_image_set
from mobilekd.errors import MobileKDError
from mobilekd.io import atomic_path, write_json
from mobilekd.features import parse_layer_pairs
from mobilekd.losses import (AbsoluteTeacherLoss, AttentionTransferLoss, DistanceKLLoss, HintLoss, MetricLoss,
                             RelativeTeacherLoss, RKDAngleLoss, RKDDistanceLoss)
from mobilekd.metrics import retrieval_metrics
from mobilekd.models import EmbeddingNet, save_model
from mobilekd.cache import TeacherCache, expected_manifest
from mobilekd.teachers import resolve_model, resolve_teacher, teacher_dim

STATE_FILE = "train_state.pt"
# options that must not change between a run and its --resume
RESUME_KEYS = ("data", "layout", "train_fraction", "student", "embed_dim", "head_bn", "student_size", "teacher",
               "teacher_size", "views", "metric_loss", "batch_classes", "images_per_class", "seed")


def log(message: str) -> None:
    tqdm.write(message)


class Trainer:
    def __init__(self, config: Config):
        self.config = config.validate()
        self.out = Path(config.out)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MobileKDError("--device cuda requested but torch sees no CUDA GPU")
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)

        c = config
        self.train_images = load_image_set(c.data, "train", c.layout, c.train_fraction)
        self.test_images = load_image_set(c.data, "test", c.layout, c.train_fraction)
        self.student = resolve_model(c.student, c.embed_dim, c.student_size, c.pretrained, c.head_bn).to(self.device)
        self.teacher = resolve_teacher(c.teacher, c.teacher_size, c.threads or None) if (c.teacher and c.uses_teacher) else None

        self.num_views = c.effective_views
        # hint/attention need the teacher's feature maps, which are not cached: they keep the teacher live
        live_teacher = self.teacher is not None and (self.num_views == 0 or c.uses_feature_maps)
        if live_teacher and not isinstance(self.teacher, EmbeddingNet) and c.uses_feature_maps:
            raise MobileKDError("hint/attention losses need a teacher network with feature maps, not a black box")
        if self.teacher is not None and self.teacher.preprocess is None and self.num_views != 1:
            raise MobileKDError("a teacher of precomputed embeddings has one view per image: use --views 1")
        inputs = {"student": self.student.preprocess}
        if live_teacher:
            inputs["teacher"] = self.teacher.preprocess
        degradation = Degradation(c.lowres, c.jpeg_quality) if (c.lowres or c.jpeg_quality) else None
        self.views = c.view_sampler()
        self.train_set = ViewDataset(self.train_images, inputs, self.views, {"student": degradation},
                                     preload_side=c.preload, progress=c.progress)
        self.targets = None
        if self.teacher is not None and not live_teacher:
            self.targets = open_or_build_cache(c, self.teacher, self.train_set, self.out, str(self.device))
        self.sampler = PKBatchSampler(self.train_images.labels, c.batch_classes, c.images_per_class, self.num_views,
                                      c.seed, c.steps_per_epoch or None)
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=c.num_workers,
                                 persistent_workers=c.num_workers > 0)

        self.losses = torch.nn.ModuleDict()
        if c.metric_loss != "none" and c.metric_weight > 0:
            self.losses["metric"] = MetricLoss(c.metric_loss, self.train_images.num_classes, self.student.embed_dim)
        self.feature_stages = None
        if self.teacher is not None:
            for name, make in self._embedding_losses().items():
                if getattr(c, f"{name}_weight") > 0:
                    self.losses[name] = make()
            if c.uses_feature_maps:
                self.feature_stages = parse_layer_pairs(c.feature_layers, self.student.feature_info,
                                                        self.teacher.feature_info)
                if c.hint_weight > 0:
                    self.losses["hint"] = HintLoss(
                        [self.student.feature_info[i]["num_chs"] for i in self.feature_stages[0]],
                        [self.teacher.feature_info[i]["num_chs"] for i in self.feature_stages[1]])
                if c.attention_weight > 0:
                    self.losses["attention"] = AttentionTransferLoss()
        self.weights = {name: getattr(c, f"{name}_weight") for name in self.losses}
        self.losses.to(self.device)

        self.optimizer = torch.optim.AdamW([
            {"params": self.student.parameters()},
            {"params": self.losses.parameters(), "weight_decay": 0.0},
        ], lr=c.lr, weight_decay=c.weight_decay)
        total = c.epochs * len(self.sampler)
        warmup = int(c.warmup_epochs * len(self.sampler))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: _warmup_cosine(step, warmup, total))
        self.start_epoch = 0
        self.history: list[dict] = []
        self.teacher_metrics: dict | None = None
        self._test_teacher: np.ndarray | None = None
        if c.resume:
            self._resume()

    def _embedding_losses(self) -> dict:
        """Losses on (student embeddings, teacher embeddings) of the batch, by config name."""
        c = self.config
        return {
            "absolute": lambda: AbsoluteTeacherLoss(self.student.embed_dim, teacher_dim(self.teacher),
                                                    squared=c.absolute_squared),
            "relative": lambda: RelativeTeacherLoss(c.relative_reduction),
            "rkd_distance": RKDDistanceLoss,
            "rkd_angle": RKDAngleLoss,
            "kl": lambda: DistanceKLLoss(c.kl_temperature),
        }

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            log(f"--resume: no {path}, starting from scratch")
            return
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = state["config"]
        changed = [k for k in RESUME_KEYS if saved.get(k) != getattr(self.config, k)]
        if changed:
            raise MobileKDError(f"--resume: {path} was trained with different {', '.join(changed)}; "
                                "use another --out or the same options")
        self.student.load_state_dict(state["student"])
        self.losses.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.history = json.loads(state["history"])
        log(f"resumed from {path} after epoch {self.start_epoch}")

    def save(self, epoch: int) -> None:
        metadata = {"epoch": epoch + 1, "config": self.config.to_dict(),
                    "metrics": next((h["test"] for h in reversed(self.history) if "test" in h), None)}
        save_model(self.student, self.out, metadata)
        state = {"epoch": epoch, "config": self.config.to_dict(), "student": self.student.state_dict(),
                 "losses": self.losses.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": json.dumps(self.history)}
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)
        write_json(self.out / "history.json", self.history)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        c = self.config
        embeddings = embed_image_set(self.student, self.test_images, str(self.device), progress=c.progress,
                                     desc="eval student")
        result = {"test": retrieval_metrics(embeddings, self.test_images.labels)}
        if self.teacher is not None and self.teacher.preprocess is not None:
            if self._test_teacher is None:
                self._test_teacher = embed_image_set(self.teacher, self.test_images, str(self.device),
                                                     progress=c.progress, desc="eval teacher")
                self.teacher_metrics = retrieval_metrics(self._test_teacher, self.test_images.labels)
            if self._test_teacher.shape[1] == embeddings.shape[1]:  # directly compatible embeddings
                result["student_to_teacher"] = retrieval_metrics(embeddings, self.test_images.labels,
                                                                 self._test_teacher, self.test_images.labels)
        return result

    # ------------------------------------------------------------------ training
    def train_step(self, batch: dict) -> dict[str, float]:
        student_in = batch["student"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device)
        if self.feature_stages is not None:
            embeddings, student_maps = self.student.forward_with_intermediates(student_in, self.feature_stages[0])
        else:
            embeddings = self.student(student_in)
        teacher_out = teacher_maps = None
        if self.teacher is not None:
            if self.targets is not None:
                teacher_out = self.targets(batch["index"], batch["view"]).to(self.device)
            else:
                with torch.no_grad():
                    teacher_in = batch["teacher"].to(self.device)
                    if self.feature_stages is not None:
                        teacher_out, teacher_maps = self.teacher.forward_with_intermediates(teacher_in,
                                                                                            self.feature_stages[1])
                    else:
                        teacher_out = self.teacher(teacher_in)
        parts = {}
        for name, loss in self.losses.items():
            if name == "metric":
                parts[name] = loss(embeddings, labels)
            elif name in ("hint", "attention"):
                parts[name] = loss(student_maps, teacher_maps)
            else:
                parts[name] = loss(embeddings, teacher_out)
        total = sum(self.weights[name] * value for name, value in parts.items())
        bad = [name for name, value in parts.items() if not torch.isfinite(value)]
        if bad:  # stop before the step: the last checkpoint on disk stays the last good one
            raise MobileKDError(f"loss term {', '.join(bad)} became {parts[bad[0]].item()} at step "
                                f"{self.scheduler.last_epoch + 1}; the last good checkpoint is in {self.out} "
                                "(try a lower --lr or weight)")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

    def run(self) -> dict:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "config.json", c.to_dict())
        if self.start_epoch >= c.epochs:
            log(f"{self.out}: already trained for {c.epochs} epochs")
        for epoch in range(self.start_epoch, c.epochs):
            self.student.train()
            self.sampler.set_epoch(epoch)
            torch.manual_seed(c.seed * 100_003 + epoch)
            sums: dict[str, float] = {}
            started = time.time()
            bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{c.epochs}", disable=not c.progress, leave=False)
            for step, batch in enumerate(bar, 1):
                values = self.train_step(batch)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{sums['loss'] / step:.4f}")
            record = {"epoch": epoch + 1, "seconds": round(time.time() - started, 2),
                      **{f"loss_{k}" if k != "loss" else k: v / len(self.sampler) for k, v in sums.items()}}
            if (epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs:
                record.update(self.evaluate())
            self.history.append(record)
            self.save(epoch)
            log(_epoch_line(record))
        final = next((h for h in reversed(self.history) if "test" in h), {})
        summary = {"out": str(self.out), "test": final.get("test"), "student_to_teacher": final.get("student_to_teacher"),
                   "teacher": self.teacher_metrics, "epochs": c.epochs}
        write_json(self.out / "metrics.json", summary)
        return summary


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_line(record: dict) -> str:
    line = f"epoch {record['epoch']}: loss {record['loss']:.4f} ({record['seconds']:.0f} s)"
    if "test" in record:
        line += f" | test R@1 {record['test']['R@1']:.2f} MAP@R {record['test']['MAP@R']:.2f}"
    if "student_to_teacher" in record:
        line += f" | student->teacher R@1 {record['student_to_teacher']['R@1']:.2f}"
    return line


def open_or_build_cache(config: Config, teacher, train_set: ViewDataset, out: Path, device: str) -> TeacherCache:
    """The run's teacher targets: ``--teacher-cache`` (checked against this run) or OUT/teacher_cache."""
    teacher_set = train_set.with_inputs({"teacher": teacher.preprocess} if teacher.preprocess is not None else {})
    data = config.data_identity("train")
    if config.teacher_cache:
        return TeacherCache.open(config.teacher_cache,
                                 expected_manifest(teacher, teacher_set, config.effective_views, data))
    return TeacherCache.build(out / "teacher_cache", teacher, teacher_set, config.effective_views, data, device,
                              progress=config.progress)


def train(config: Config) -> dict:
    """Python API: train (or distil, when teacher losses are weighted) and return the final metrics."""
    return Trainer(config).run()

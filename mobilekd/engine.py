"""The training loop shared by ``mobilekd.train`` (metric learning) and ``mobilekd.distill`` (+ teachers).

A run trains one student on one or more *domains*. A domain is a data set with its own teacher, teacher
targets, class-balanced sampler and metric loss: the primary domain is ``--data``/``--teacher``; every
``--domain DATA=TEACHER`` adds a specialist teacher on its own data (Feng et al.: several specialists, one
universal student). Each epoch interleaves the domains' batches round-robin, so every step distils one
domain's batch from that domain's teacher.

Per step: total = sum of weight x loss over the registered losses the configuration switches on
(``mobilekd.losses.registry``): a loss on ``labels`` (``metric``) sees the labeled rows; a loss on
``embeddings`` (``absolute``, ``relative``, ``rkd_distance``, ``rkd_angle``, ``kl``) the (student, teacher)
embeddings of all rows, mixed rows included; a loss on ``maps`` (``hint``, ``attention``) the feature maps of a
live teacher.
Per epoch: a checkpoint (``OUT/model.safetensors`` + ``model.json`` for users and exporters,
``OUT/train_state.pt`` for ``--resume``), evaluation every ``eval_every`` epochs, ``OUT/history.json``.
Batches, views, mixup and dropout are seeded per (seed, epoch), so a run resumed after a kill reaches the same
weights as one that never stopped (same device and thread count).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mobilekd.config import Config
from mobilekd.data.image_sets import ImageSet, load_image_set
from mobilekd.data.sampler import PKBatchSampler
from mobilekd.data.view_dataset import ViewDataset, check_readable
from mobilekd.data.views import Degradation
from mobilekd.distributed import Context, ShardedBatchSampler, init_from_env
from mobilekd.errors import MobileKDError
from mobilekd.inference import embed_image_set
from mobilekd.io import atomic_path, check_writable_dir, lock_folder, unlock_folder, write_json
from mobilekd.losses import LossContext, get_loss
from mobilekd.metrics import retrieval_metrics
from mobilekd.models import EmbeddingNet, parse_layer_pairs, save_model
from mobilekd.models.resolve import resolve_model, resolve_teacher, teacher_dim
from mobilekd.teacher_cache import TeacherCache, expected_manifest
from mobilekd.threads import set_threads
from mobilekd.weights.selection import initialise_from

STATE_FILE = "train_state.pt"
# options that must not change between a run and its --resume
RESUME_KEYS = ("data", "layout", "train_fraction", "unlabeled", "unlabeled_limit", "student", "student_weights",
               "pretrained", "embed_dim", "head_bn", "student_size", "teacher", "teacher_size", "views", "teacher_budget",
               "domain", "metric_loss", "batch_classes", "images_per_class", "seed", "init_from")
BN_UNFOLD_IMAGES = 256  # training images whose statistics unfold a folded-BN student's BatchNorm


def log(message: str) -> None:
    tqdm.write(message)


def load_teacher_projections(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The absolute teacher loss's learned student->teacher projections ([teacher_dim, student_dim]; a domain
    has one when its teacher's dims differ from the student's) saved in a run's ``STATE_FILE``, keyed by their
    state-dict name ``<domain>.absolute.projection.weight``; {} when the run left no state or no projection.
    Public so that tools mapping a distilled student into its teacher's space (``mobilekd.compat teacher``)
    need not know the state file's layout."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return {}
    losses = torch.load(path, map_location="cpu", weights_only=True).get("losses", {})
    return {k: v.float() for k, v in losses.items() if k.endswith(".absolute.projection.weight") and v.ndim == 2}


# Teachers are frozen, so within one process (benchmarks.distill_cub trains many arms against one teacher, and the
# teacher's test pass costs as much as a few epochs of a small student) the test split's teacher embeddings are
# computed once. Keyed by what determines them; only named teachers (weights from a package, not a file that
# could change on disk).
_TEACHER_TEST_EMBEDDINGS: dict[str, np.ndarray] = {}


def _teacher_test_key(config: Config) -> str | None:
    if not config.teacher or "," in config.teacher or Path(config.teacher).exists():
        return None
    return json.dumps([config.teacher, config.teacher_size, config.data_identity("test")], sort_keys=True)


@dataclass
class Domain:
    """One data set with its teacher: what a batch is drawn from and distilled against."""

    name: str
    data: str
    train_images: ImageSet
    test_images: ImageSet
    teacher: object | None
    train_set: ViewDataset
    sampler: PKBatchSampler
    loader: DataLoader
    targets: TeacherCache | None = None
    feature_stages: tuple[list[int], list[int]] | None = None
    test_set: ViewDataset | None = field(default=None, repr=False)  # test images, decoded once
    test_teacher: np.ndarray | None = field(default=None, repr=False)
    teacher_metrics: dict | None = None


class Trainer:
    def __init__(self, config: Config):
        self.config = c = config.validate()
        self.out = check_writable_dir(c.out)
        self.context = init_from_env(c.device)
        self.skipped_images = 0
        device = c.device
        if self.context.enabled and device.startswith("cuda"):
            device = f"cuda:{self.context.local_rank}"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MobileKDError("--device cuda requested but torch sees no CUDA GPU")
        self.threads = set_threads(c.threads)  # 0: the idle cores (mobilekd.threads)
        torch.manual_seed(c.seed)
        self.student_source = None  # where --student-weights came from, for model.json
        self.student = self._build_student()
        # before anything is written: a source of another family fails here and leaves OUT untouched
        self.init_from = initialise_from(self.student, c.init_from) if c.init_from else None
        if self.context.is_main:  # the run owns its folder (and the teacher cache it builds there)
            lock_folder(self.out)
        self.student.to(self.device)
        self.num_views = c.effective_views

        specs = [(c.data, c.teacher)] + [tuple(spec.split("=")) for spec in (c.domain or [])]
        self.domains = [self._build_domain(i, data, teacher) for i, (data, teacher) in enumerate(specs)]
        self.bn_unfolded = None
        resuming = c.resume and (self.out / STATE_FILE).is_file()
        if self.student.spec.bn_folded and not resuming:  # a resumed run restores the unfolded weights
            self._unfold_batchnorm()
        self.channels_last = self._channels_last()
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)

        # the losses' own parameters (proxies, projections) start from the run's seed alone: building a teacher
        # cache draws from the global RNG (every DataLoader iterator takes a base seed), reusing one does not
        torch.manual_seed(phase_seed(c.seed, "losses"))
        self.losses = torch.nn.ModuleDict({domain.name: self._domain_losses(domain) for domain in self.domains})
        self.losses.to(self.device)
        self.step_module = StepModule(self.student, self.losses)
        if self.context.enabled:  # gradients of the student and of the losses' parameters are averaged
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(self.step_module, find_unused_parameters=True,
                                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)
        head = [p for name, p in self.student.named_parameters() if name.startswith("head.")]
        body = [p for name, p in self.student.named_parameters() if not name.startswith("head.")]
        self.optimizer = torch.optim.AdamW([
            {"params": body},
            {"params": head, "lr": c.lr * c.head_lr_scale},
            {"params": self.losses.parameters(), "weight_decay": 0.0},
        ], lr=c.lr, weight_decay=c.weight_decay)
        total = c.epochs * self.steps_per_epoch
        warmup = int(c.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: _warmup_cosine(step, warmup, total))
        self.start_epoch = 0
        self.history: list[dict] = []
        if c.resume:
            self._resume()

    # ------------------------------------------------------------------ set-up
    def _build_student(self) -> EmbeddingNet:
        c = self.config
        if not c.student_weights:
            return resolve_model(c.student, c.embed_dim, c.student_size, c.pretrained, c.head_bn)
        if Path(c.student).exists():
            raise MobileKDError("--student-weights needs --student to name an architecture, not a checkpoint folder")
        from mobilekd.weights.from_file import student_with_weights

        student, self.student_source = student_with_weights(c.student_weights, c.student, c.embed_dim, c.student_size,
                                                            c.head_bn, c.data, self.threads)
        check = self.student_source.get("self_check")
        if check:
            log(f"--student-weights {c.student_weights} -> {student.spec.arch}; self-check vs LiteRT: {check}")
        return student

    def _channels_last(self) -> bool:
        """``--memory-format``; auto: channels-last when the student starts from trained weights (faster and
        accurate there), NCHW for a random-init student (its channels-last BatchNorm gradients are not)."""
        c = self.config
        if c.memory_format != "auto":
            return c.memory_format == "channels_last"
        return bool(c.pretrained or c.student_weights or c.init_from or Path(c.student).exists())

    def _unfold_batchnorm(self) -> None:
        """Folded BatchNorm (imported weights) -> running statistics of real training images, function
        unchanged (``mobilekd.bn_unfold``); train-mode BN then starts where ImageNet left it."""
        from mobilekd.weights.bn_unfold import unfold_batchnorm

        c = self.config
        count = min(BN_UNFOLD_IMAGES, len(self.train_set))
        chosen = np.sort(np.random.default_rng([c.seed, 1717]).permutation(len(self.train_set))[:count])
        dataset = self.train_set.with_inputs({"x": self.student.preprocess})  # view 0: the evaluation view
        loader = DataLoader(torch.utils.data.Subset(dataset, [(int(i), 0) for i in chosen]), batch_size=64)
        seen = unfold_batchnorm(self.student, (batch["x"].to(self.device) for batch in loader))
        self.student.spec.bn_folded = False
        self.bn_unfolded = {"images": seen, "source": "training split, evaluation view"}
        log(f"BatchNorm unfolded from {seen} training images (folded-BN student; eval-mode function unchanged)")

    @property
    def primary(self) -> Domain:
        return self.domains[0]

    # single-domain conveniences (the common case, and what the tests and the demo use)
    @property
    def teacher(self):
        return self.primary.teacher

    @property
    def targets(self):
        return self.primary.targets

    @property
    def train_set(self) -> ViewDataset:
        return self.primary.train_set

    @property
    def feature_stages(self):
        return self.primary.feature_stages

    @property
    def steps_per_epoch(self) -> int:
        return sum(len(domain.sampler) for domain in self.domains)

    def _build_domain(self, position: int, data: str, teacher_name: str | None) -> Domain:
        c = self.config
        name = "main" if position == 0 else f"domain{position}"
        train_images = (c.training_images() if position == 0
                        else load_image_set(data, "train", "auto", c.train_fraction))
        test_images = load_image_set(data, "test", c.layout if position == 0 else "auto", c.train_fraction)
        if c.teacher_budget and position == 0:
            if c.teacher_budget > len(train_images):
                raise MobileKDError(f"--teacher-budget {c.teacher_budget} is larger than the {len(train_images)} "
                                    "training images")
            chosen = np.sort(np.random.default_rng([c.seed, 4242]).permutation(len(train_images))[:c.teacher_budget])
            train_images = train_images.subset(chosen).without_labels()  # label-free: the teacher is the only signal
        degradation = Degradation(c.lowres, c.jpeg_quality) if (c.lowres or c.jpeg_quality) else None
        # every image of both splits is decoded (--preload) or checked now, before any teacher or training work
        train_set = ViewDataset(train_images, {}, c.view_sampler(), {"student": degradation},
                                preload_side=c.preload, progress=c.progress)
        test_set = ViewDataset(test_images, {}, preload_side=c.preload, progress=c.progress)
        report = self.out / ("unreadable_images.txt" if position == 0 else f"unreadable_images_{name}.txt")
        checked, skipped = check_readable({"train": train_set, "test": test_set}, report, c.skip_bad_images,
                                          c.progress)
        self.skipped_images += skipped
        train_set, test_set = checked["train"], checked["test"]
        train_images, test_images = train_set.images, test_set.images
        teacher = None
        if teacher_name and c.uses_teacher:
            teacher = resolve_teacher(teacher_name, c.teacher_size, self.threads)
        # hint/attention need the teacher's feature maps, which are not cached: they keep the teacher live
        live_teacher = teacher is not None and (self.num_views == 0 or c.uses_feature_maps)
        if teacher is not None:
            if c.uses_feature_maps and not isinstance(teacher, EmbeddingNet):
                raise MobileKDError("hint/attention losses need a teacher network with feature maps, not a black box "
                                    "or an ensemble")
            if teacher.preprocess is None and self.num_views != 1:
                raise MobileKDError("a teacher of precomputed embeddings has one view per image: use --views 1")
        inputs = {"student": self.student.preprocess}
        if live_teacher:
            inputs["teacher"] = teacher.preprocess
        train_set = train_set.with_inputs(inputs)
        sampler = PKBatchSampler(train_images.labels, c.batch_classes, c.images_per_class, self.num_views,
                                 c.seed + position, c.steps_per_epoch or None, c.unlabeled_per_batch)
        if self.context.enabled:
            sampler = ShardedBatchSampler(sampler, self.context)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=c.num_workers,
                            persistent_workers=c.num_workers > 0)
        domain = Domain(name, data, train_images, test_images, teacher, train_set, sampler, loader, test_set=test_set)
        if teacher is not None and not live_teacher:
            cache_dir = c.teacher_cache if position == 0 else None
            domain.targets = open_or_build_cache(c, teacher, train_set, self.out / f"teacher_cache_{name}"
                                                 if position else self.out / "teacher_cache", str(self.device),
                                                 cache_dir, data, self.context)
        if teacher is not None and c.uses_feature_maps:
            domain.feature_stages = parse_layer_pairs(c.feature_layers, self.student.feature_info, teacher.feature_info)
        return domain

    def _domain_losses(self, domain: Domain) -> torch.nn.ModuleDict:
        """The registered losses the configuration switches on, built for this domain (a loss that needs a
        teacher only with one, a loss on labels only where there are labels)."""
        teacher = domain.teacher
        known_dim = teacher is not None and teacher.embed_dim is not None  # an ONNX teacher's may be dynamic
        context = LossContext(self.student.embed_dim, teacher_dim(teacher) if known_dim else None,
                              domain.train_images.num_classes)
        if domain.feature_stages is not None:
            student_stages, teacher_stages = domain.feature_stages
            context = replace(
                context, student_channels=tuple(self.student.feature_info[i]["num_chs"] for i in student_stages),
                teacher_channels=tuple(teacher.feature_info[i]["num_chs"] for i in teacher_stages))
        losses = torch.nn.ModuleDict()
        for spec in self.config.active_losses():
            if (teacher is None and spec.needs_teacher) or (spec.inputs == "labels" and not context.num_classes):
                continue
            losses[spec.name] = spec.build(context, self.config)
        return losses

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
        self.student.spec.bn_folded = False  # the saved weights were unfolded before the run's first step
        self.bn_unfolded = state.get("bn_unfolded")
        log(f"resumed from {path} after epoch {self.start_epoch}")

    def save(self, epoch: int) -> None:
        metadata = {"epoch": epoch + 1, "config": self.config.to_dict(), "skipped_images": self.skipped_images,
                    "metrics": next((h["test"] for h in reversed(self.history) if "test" in h), None)}
        if self.bn_unfolded:
            metadata["bn_unfolded"] = self.bn_unfolded
        if self.student_source:
            metadata["student_weights"] = self.student_source
        if self.init_from:
            metadata["init_from"] = self.init_from
        save_model(self.student, self.out, metadata)
        state = {"epoch": epoch, "config": self.config.to_dict(), "student": self.student.state_dict(),
                 "losses": self.losses.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": json.dumps(self.history),
                 "bn_unfolded": self.bn_unfolded}
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)
        write_json(self.out / "history.json", self.history)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        result = {}
        for domain in self.domains:
            metrics = self._evaluate_domain(domain)
            if domain is self.primary:
                result.update(metrics)
            else:
                result[domain.name] = metrics
        return result

    def _evaluate_domain(self, domain: Domain) -> dict:
        c = self.config
        if domain.test_set is None:
            domain.test_set = ViewDataset(domain.test_images, {}, preload_side=c.preload, progress=c.progress)
        embeddings = embed_image_set(self.student, domain.test_images, str(self.device), progress=c.progress,
                                     desc=f"eval student ({domain.name})", decoded=domain.test_set)
        result = {"test": retrieval_metrics(embeddings, domain.test_images.labels)}
        teacher = domain.teacher
        if teacher is not None and teacher.preprocess is not None:
            if domain.test_teacher is None:
                key = _teacher_test_key(c) if domain is self.primary else None
                domain.test_teacher = _TEACHER_TEST_EMBEDDINGS.get(key) if key else None
                if domain.test_teacher is None:
                    domain.test_teacher = embed_image_set(teacher, domain.test_images, str(self.device),
                                                          progress=c.progress, desc=f"eval teacher ({domain.name})",
                                                          decoded=domain.test_set)
                    if key:
                        _TEACHER_TEST_EMBEDDINGS[key] = domain.test_teacher
                domain.teacher_metrics = retrieval_metrics(domain.test_teacher, domain.test_images.labels)
            result["teacher"] = domain.teacher_metrics  # kept in the history, so a resumed run still reports it
            if domain.test_teacher.shape[1] == embeddings.shape[1]:  # directly compatible embeddings
                result["student_to_teacher"] = retrieval_metrics(embeddings, domain.test_images.labels,
                                                                 domain.test_teacher, domain.test_images.labels)
        return result

    # ------------------------------------------------------------------ training
    def train_step(self, domain: Domain, batch: dict) -> dict[str, float]:
        c = self.config
        student_in = batch["student"].to(self.device, non_blocking=True)
        if self.channels_last:
            student_in = student_in.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(self.device)
        teacher_out = teacher_maps = None
        if domain.teacher is not None:
            if domain.targets is not None:
                teacher_out = domain.targets(batch["index"], batch["view"]).to(self.device)
            else:
                with torch.no_grad():
                    teacher_in = batch["teacher"].to(self.device)
                    if domain.feature_stages is not None:
                        teacher_out, teacher_maps = domain.teacher.forward_with_intermediates(
                            teacher_in, domain.feature_stages[1])
                    else:
                        teacher_out = domain.teacher(teacher_in)
        if c.mixup_alpha > 0 and teacher_out is not None:
            student_in, teacher_out = mix_inputs_and_targets(student_in, teacher_out, c.mixup_alpha)
        stages = domain.feature_stages[0] if domain.feature_stages is not None else None
        parts = self.step_module(domain.name, student_in, labels, teacher_out, teacher_maps, stages)
        total = sum(c.loss_weight(name) * value for name, value in parts.items())
        bad = [name for name, value in parts.items() if not torch.isfinite(value)]
        if bad:  # stop before the step: the last checkpoint on disk stays the last good one
            saved = self.out / "model.safetensors"  # written (or resumed from) by this run only if it has history
            where = (f"the last good checkpoint is {saved} (epoch {self.history[-1]['epoch']})"
                     if self.history and saved.is_file() else
                     "no checkpoint was written: it failed in the first epoch")
            raise MobileKDError(f"loss term {', '.join(bad)} became {parts[bad[0]].item()} at step "
                                f"{self.scheduler.last_epoch + 1}; {where} (try a lower --lr or weight)")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

    def _epoch_batches(self):
        """The domains' batches, interleaved round-robin until every domain's epoch is exhausted."""
        iterators = [(domain, iter(domain.loader)) for domain in self.domains]
        while iterators:
            for entry in list(iterators):
                domain, iterator = entry
                try:
                    yield domain, next(iterator)
                except StopIteration:
                    iterators.remove(entry)

    def run(self) -> dict:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.context.is_main:
            write_json(self.out / "config.json", c.to_dict())
        if self.start_epoch >= c.epochs:
            log(f"{self.out}: already trained for {c.epochs} epochs")
        for epoch in range(self.start_epoch, c.epochs):
            self.student.train()
            for domain in self.domains:
                domain.sampler.set_epoch(epoch)
            torch.manual_seed(c.seed * 100_003 + epoch)
            sums: dict[str, float] = {}
            started = time.time()
            bar = tqdm(self._epoch_batches(), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{c.epochs}",
                       disable=not c.progress or not self.context.is_main, leave=False)
            for step, (domain, batch) in enumerate(bar, 1):
                for key, value in self.train_step(domain, batch).items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{sums['loss'] / step:.4f}")
            record = {"epoch": epoch + 1, "seconds": round(time.time() - started, 2),
                      **{f"loss_{k}" if k != "loss" else k: v / self.steps_per_epoch for k, v in sums.items()}}
            if self.context.is_main:
                if (epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs:
                    record.update(self.evaluate())
                self.history.append(record)
                self.save(epoch)
                log(_epoch_line(record, self.domains))
            self.context.barrier()
        if not self.context.is_main:
            return {"out": str(self.out), "rank": self.context.rank}
        final = next((h for h in reversed(self.history) if "test" in h), {})
        summary = {"out": str(self.out), "test": final.get("test"), "student_to_teacher": final.get("student_to_teacher"),
                   "teacher": final.get("teacher"), "epochs": c.epochs, "skipped_images": self.skipped_images}
        if len(self.domains) > 1:
            summary["domains"] = {d.name: {"data": d.data,
                                           **(final.get(d.name, {}) if d is not self.primary else
                                              {"test": final.get("test"), "teacher": final.get("teacher")})}
                                  for d in self.domains}
        write_json(self.out / "metrics.json", summary)
        unlock_folder(self.out)
        return summary


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


def open_or_build_cache(config: Config, teacher, train_set: ViewDataset, out_dir: Path, device: str,
                        given: str | None = None, data: str | None = None,
                        context: Context = Context()) -> TeacherCache:
    """A domain's teacher targets: ``given`` (``--teacher-cache``, checked against this run) or built in
    ``out_dir`` (reused on --resume, rebuilt when stale)."""
    teacher_set = train_set.with_inputs({"teacher": teacher.preprocess} if teacher.preprocess is not None else {})
    identity = {**config.data_identity("train"), **({"path": str(Path(data).resolve())} if data else {})}
    if given:
        return TeacherCache.open(given, expected_manifest(teacher, teacher_set, config.effective_views, identity))
    return TeacherCache.build(out_dir, teacher, teacher_set, config.effective_views, identity, device,
                              progress=config.progress, context=context)


def phase_seed(seed: int, phase: str) -> int:
    """A seed for one phase of a run, derived from (seed, phase) alone, so what ran before cannot shift it."""
    return int(np.random.SeedSequence([seed, zlib.crc32(phase.encode())]).generate_state(1)[0])


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_line(record: dict, domains: list[Domain]) -> str:
    line = f"epoch {record['epoch']}: loss {record['loss']:.4f} ({record['seconds']:.0f} s)"
    if "test" in record:
        line += f" | test R@1 {record['test']['R@1']:.2f} MAP@R {record['test']['MAP@R']:.2f}"
    for domain in domains[1:]:
        if domain.name in record:
            line += f" | {domain.name} R@1 {record[domain.name]['test']['R@1']:.2f}"
    if "student_to_teacher" in record:
        line += f" | student->teacher R@1 {record['student_to_teacher']['R@1']:.2f}"
    return line


def evaluate_untrained(config: Config) -> dict:
    """Test metrics of ``config``'s student before any training: its pooled features (a new head would be
    random) through the Trainer's own evaluation, so the protocol is the trained runs'. BatchNorm unfolding
    leaves the eval-mode function unchanged; nothing is trained or saved, and the folder lock is released."""
    from dataclasses import replace as replace_fields

    from mobilekd.io import unlock_folder

    trainer = Trainer(replace_fields(config, embed_dim=0, resume=False))
    try:
        return trainer.evaluate()["test"]
    finally:
        unlock_folder(trainer.out)


def train(config: Config) -> dict:
    """Python API: train (or distil, when teacher losses are weighted) and return the final metrics."""
    return Trainer(config).run()

"""The parts of a run, each built by one function from a :class:`~mobilekd.config.Config` (and what it needs
of the others), so that each can be built alone: the student, a domain (its images, teacher, teacher targets
and batches), the teacher cache, the losses, the optimiser and its schedule.

:class:`mobilekd.engine.Trainer` calls them in a fixed order -- the order the run's random draws depend on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mobilekd.teacher_cache import TeacherCache, expected_manifest
from mobilekd.config import Config
from mobilekd.data.view_dataset import ViewDataset, check_readable
from mobilekd.data.image_sets import ImageSet, load_image_set
from mobilekd.data.sampler import PKBatchSampler
from mobilekd.data.training import data_identity, training_images, view_sampler
from mobilekd.data.views import Degradation
from mobilekd.distributed import Context, ShardedBatchSampler
from mobilekd.engine.seeds import phase_rng, run_seed
from mobilekd.errors import MobileKDError
from mobilekd.models.embedding_net import parse_layer_pairs
from mobilekd.losses import LossContext
from mobilekd.models import EmbeddingNet
from mobilekd.models.resolve import resolve_model, resolve_teacher, teacher_dim

TEACHER_TEST_FILE = "teacher_test.npz"  # the teacher's test-split embeddings and what they were made from
BN_UNFOLD_IMAGES = 256  # training images whose statistics unfold a folded-BN student's BatchNorm


def log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)


@dataclass
class Domain:
    """One data set with its teacher: what a batch is drawn from and distilled against."""

    name: str
    data: str
    train_images: ImageSet
    test_images: ImageSet
    teacher: object | None
    train_set: ViewDataset
    sampler: PKBatchSampler | None = None
    loader: DataLoader | None = None
    targets: TeacherCache | None = None
    feature_stages: tuple[list[int], list[int]] | None = None
    test_set: ViewDataset | None = field(default=None, repr=False)  # test images, decoded once
    test_teacher: np.ndarray | None = field(default=None, repr=False)
    test_cache: Path | None = None  # where the teacher's test embeddings are kept across runs (evaluation)
    teacher_metrics: dict | None = None


# ------------------------------------------------------------------ the student
def select_device(config: Config, context: Context) -> torch.device:
    """``--device``; under torchrun each process takes its local rank's GPU."""
    device = config.device
    if context.enabled and device.startswith("cuda"):
        device = f"cuda:{context.local_rank}"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MobileKDError("--device cuda requested but torch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MobileKDError("--device mps requested but torch sees no Apple GPU (MPS)")
    return device


def build_student(config: Config, threads: int) -> tuple[EmbeddingNet, dict | None]:
    """The student and, for ``--student-weights``, where its weights came from (for model.json). Seeded by
    the caller (``run_seed(seed, "student")``): a random head or backbone draws from torch's global RNG."""
    c = config
    if not c.student_weights:
        return resolve_model(c.student, c.embed_dim, c.student_size, c.pretrained, c.head_bn), None
    if Path(c.student).exists():
        raise MobileKDError("--student-weights needs --student to name an architecture, not a checkpoint folder")
    from mobilekd.weights.from_file import student_with_weights

    student, source = student_with_weights(c.student_weights, c.student, c.embed_dim, c.student_size, c.head_bn,
                                           c.data, threads)
    check = source.get("self_check")
    if check:
        log(f"--student-weights {c.student_weights} -> {student.spec.arch}; self-check vs LiteRT: {check}")
    return student, source


def prefers_channels_last(config: Config) -> bool:
    """``--memory-format``; auto: channels-last when the student starts from trained weights (faster and
    accurate there), NCHW for a random-init student (its channels-last BatchNorm gradients are not)."""
    c = config
    if c.memory_format != "auto":
        return c.memory_format == "channels_last"
    return bool(c.pretrained or c.student_weights or c.init_from or Path(c.student).exists())


def unfold_batchnorm(student: EmbeddingNet, train_set: ViewDataset, seed: int, device: torch.device) -> dict:
    """Folded BatchNorm (imported weights) -> running statistics of real training images, function
    unchanged (``mobilekd.weights.bn_unfold``); train-mode BN then starts where ImageNet left it."""
    from mobilekd.weights.bn_unfold import unfold_batchnorm as unfold

    count = min(BN_UNFOLD_IMAGES, len(train_set))
    chosen = np.sort(phase_rng(seed, "bn_unfold").permutation(len(train_set))[:count])
    dataset = train_set.with_inputs({"x": student.preprocess})  # view 0: the evaluation view
    loader = DataLoader(torch.utils.data.Subset(dataset, [(int(i), 0) for i in chosen]), batch_size=64)
    seen = unfold(student, (batch["x"].to(device) for batch in loader))
    student.spec.bn_folded = False
    log(f"BatchNorm unfolded from {seen} training images (folded-BN student; eval-mode function unchanged)")
    return {"images": seen, "source": "training split, evaluation view"}


# ------------------------------------------------------------------ domains
def domain_specs(config: Config) -> list[tuple[str, str | None]]:
    """(data, teacher) of every domain: ``--data``/``--teacher`` first, then each ``--domain DATA=TEACHER``."""
    return [(config.data, config.teacher)] + [tuple(spec.split("=")) for spec in (config.domain or [])]


def domain_name(position: int) -> str:
    return "main" if position == 0 else f"domain{position}"


def load_domain_data(config: Config, position: int, data: str,
                     report_dir: Path) -> tuple[ViewDataset, ViewDataset, int]:
    """A domain's training and test sets, every image decoded (``--preload``) or checked now, before any teacher
    or training work; unreadable ones are listed in ``report_dir`` (and skipped with ``--skip-bad-images``).
    Returns (train set, test set, images skipped)."""
    c = config
    train_images = training_images(c) if position == 0 else load_image_set(data, "train", "auto", c.train_fraction)
    test_images = load_image_set(data, "test", c.layout if position == 0 else "auto", c.train_fraction)
    if c.teacher_budget and position == 0:
        if c.teacher_budget > len(train_images):
            raise MobileKDError(f"--teacher-budget {c.teacher_budget} is larger than the {len(train_images)} "
                                "training images")
        chosen = np.sort(phase_rng(c.seed, "teacher_budget").permutation(len(train_images))[:c.teacher_budget])
        train_images = train_images.subset(chosen).without_labels()  # label-free: the teacher is the only signal
    degradation = Degradation(c.lowres, c.jpeg_quality) if (c.lowres or c.jpeg_quality) else None
    train_set = ViewDataset(train_images, {}, view_sampler(c), {"student": degradation},
                            preload_side=c.preload, progress=c.progress)
    test_set = ViewDataset(test_images, {}, preload_side=c.preload, progress=c.progress)
    report = report_dir / ("unreadable_images.txt" if position == 0 else
                           f"unreadable_images_{domain_name(position)}.txt")
    checked, skipped = check_readable({"train": train_set, "test": test_set}, report, c.skip_bad_images, c.progress)
    return checked["train"], checked["test"], skipped


def domain_teacher(config: Config, teacher_name: str | None, threads: int):
    """The domain's frozen teacher, or None when no loss needs one (what kinds of teacher the losses accept is
    checked by ``Config.validate``)."""
    return resolve_teacher(teacher_name, config.teacher_size, threads) if teacher_name and config.uses_teacher else None


def keeps_teacher_live(config: Config, teacher) -> bool:
    """A teacher runs live (no cache) with a fresh view every step (``--views 0``) or for feature-map losses
    (hint/attention need its maps, which are not cached)."""
    return teacher is not None and (config.effective_views == 0 or config.uses_feature_maps)


def batch_shape(config: Config, domain: Domain) -> tuple[int, int]:
    """P classes x K images per batch: the configured ones, or, on training data with fewer than P classes
    (a small catalogue), every class with K raised so a batch keeps its P x K images -- a recipe runs unchanged
    on any data set."""
    labels = domain.train_images.labels
    present = len(set(int(label) for label in labels if label >= 0))
    if not present or present >= config.batch_classes:
        return config.batch_classes, config.images_per_class
    per_class = -(-config.batch_classes * config.images_per_class // present)
    log(f"note: {domain.name} trains on {present} classes, fewer than --batch-classes {config.batch_classes}: "
        f"batches of {present} classes x {per_class} images")
    return present, per_class


def domain_loader(config: Config, domain: Domain, position: int, context: Context) -> None:
    """The domain's P x K batch sampler (sharded across processes under torchrun) and its DataLoader."""
    c = config
    classes, per_class = batch_shape(c, domain)
    sampler = PKBatchSampler(domain.train_images.labels, classes, per_class, c.effective_views,
                             run_seed(c.seed, "sampler", position), c.steps_per_epoch or None, c.unlabeled_per_batch)
    if context.enabled:
        sampler = ShardedBatchSampler(sampler, context)
    domain.sampler = sampler
    domain.loader = DataLoader(domain.train_set, batch_sampler=sampler, num_workers=c.num_workers,
                               persistent_workers=c.num_workers > 0)


def build_domain(config: Config, position: int, data: str, teacher_name: str | None, student: EmbeddingNet,
                 out: Path, device: torch.device, threads: int, context: Context = Context()) -> tuple[Domain, int]:
    """One domain of a run, ready to train: data, teacher, batches, teacher targets (cache opened or built in
    ``out``) and the feature-map stage pairs. Returns (domain, images skipped)."""
    c = config
    name = domain_name(position)
    train_set, test_set, skipped = load_domain_data(c, position, data, out)
    teacher = domain_teacher(c, teacher_name, threads)
    live_teacher = keeps_teacher_live(c, teacher)
    inputs = {"student": student.preprocess, **({"teacher": teacher.preprocess} if live_teacher else {})}
    domain = Domain(name, data, train_set.images, test_set.images, teacher, train_set.with_inputs(inputs),
                    test_set=test_set)
    domain_loader(c, domain, position, context)
    if teacher is not None and not live_teacher:
        cache_dir = out / ("teacher_cache" if position == 0 else f"teacher_cache_{name}")
        domain.targets = open_or_build_cache(c, teacher, domain.train_set, cache_dir, str(device),
                                             c.teacher_cache if position == 0 else None, data, context)
    if teacher is not None:  # beside the teacher targets (a shared --teacher-cache), else in the run folder
        domain.test_cache = (domain.targets.path if domain.targets is not None else out) / TEACHER_TEST_FILE
    if teacher is not None and c.uses_feature_maps:
        domain.feature_stages = parse_layer_pairs(c.feature_layers, student.feature_info, teacher.feature_info)
    return domain, skipped


# ------------------------------------------------------------------ teacher targets
def open_or_build_cache(config: Config, teacher, train_set: ViewDataset, out_dir: Path, device: str,
                        given: str | None = None, data: str | None = None,
                        context: Context = Context()) -> TeacherCache:
    """A domain's teacher targets: ``given`` (``--teacher-cache``, checked against this run) or built in
    ``out_dir`` (reused on --resume, rebuilt when stale)."""
    teacher_set = train_set.with_inputs({"teacher": teacher.preprocess} if teacher.preprocess is not None else {})
    identity = {**data_identity(config, "train"), **({"path": str(Path(data).resolve())} if data else {})}
    if given:
        return TeacherCache.open(given, expected_manifest(teacher, teacher_set, config.effective_views, identity))
    return TeacherCache.build(out_dir, teacher, teacher_set, config.effective_views, identity, device,
                              progress=config.progress, context=context)


def build_teacher_cache(config: Config, out_dir: str | Path, threads: int = 1) -> TeacherCache:
    """The primary domain's teacher targets for ``config``, built in ``out_dir`` (or reused there) exactly as a
    run of ``config`` would build them, without building the run: the same images, views and identity."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set, _, _ = load_domain_data(config, 0, config.data, out_dir)
    teacher = domain_teacher(config, config.teacher, threads)
    if teacher is None:
        raise MobileKDError("no teacher targets to cache: no teacher loss is weighted (e.g. --kl-weight 1)")
    return open_or_build_cache(config, teacher, train_set, out_dir, config.device, None, config.data)


# ------------------------------------------------------------------ losses and optimisation
def build_losses(config: Config, student: EmbeddingNet, teacher=None, num_classes: int = 0,
                 feature_stages: tuple[list[int], list[int]] | None = None) -> torch.nn.ModuleDict:
    """The registered losses ``config`` switches on, built for one domain: a loss that needs a teacher only
    with one, a loss on labels only where there are labeled classes. Seeded by the caller
    (``run_seed(seed, "losses")``): proxies and projections draw from torch's global RNG."""
    known_dim = teacher is not None and teacher.embed_dim is not None  # an ONNX teacher's may be dynamic
    context = LossContext(student.embed_dim, teacher_dim(teacher) if known_dim else None, num_classes)
    if feature_stages is not None:
        student_stages, teacher_stages = feature_stages
        context = replace(context,
                          student_channels=tuple(student.feature_info[i]["num_chs"] for i in student_stages),
                          teacher_channels=tuple(teacher.feature_info[i]["num_chs"] for i in teacher_stages))
    losses = torch.nn.ModuleDict()
    for spec in config.active_losses():
        if (teacher is None and spec.needs_teacher) or (spec.inputs == "labels" and not context.num_classes):
            continue
        losses[spec.name] = spec.build(context, config)
    return losses


def build_optimizer(config: Config, student: EmbeddingNet, losses: torch.nn.Module, steps_per_epoch: int):
    """AdamW over the student's body, its head (lr x ``head_lr_scale``) and the losses' parameters (no weight
    decay), with linear warm-up then cosine decay per step. Returns (optimizer, scheduler)."""
    c = config
    head = [p for name, p in student.named_parameters() if name.startswith("head.")]
    body = [p for name, p in student.named_parameters() if not name.startswith("head.")]
    optimizer = torch.optim.AdamW([
        {"params": body},
        {"params": head, "lr": c.lr * c.head_lr_scale},
        {"params": losses.parameters(), "weight_decay": 0.0},
    ], lr=c.lr, weight_decay=c.weight_decay)
    total = c.epochs * steps_per_epoch
    warmup = int(c.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, warmup, total))
    return optimizer, scheduler


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

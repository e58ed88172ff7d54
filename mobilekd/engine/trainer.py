"""A run: :class:`Trainer` builds its parts (``mobilekd.engine.builders``) in the order the run's random draws
depend on, then trains them with the loop (``mobilekd.engine.loop``) and its hooks."""

from __future__ import annotations

from dataclasses import replace

import torch

from mobilekd.config import Config
from mobilekd.data.image_sets import load_image_set
from mobilekd.data.view_dataset import ViewDataset, check_readable
from mobilekd.distributed import Context, init_from_env
from mobilekd.engine import builders
from mobilekd.engine.builders import Domain
from mobilekd.engine.checkpoint import (STATE_FILE, check_run_folder, mark_run_folder, resume, run_entries,
                                       save_checkpoint)
from mobilekd.engine.evaluation import TeacherTestEmbeddings, evaluate_domain, evaluate_domains
from mobilekd.engine.hooks import Hook, default_hooks
from mobilekd.engine.loop import epoch_batches, fit
from mobilekd.engine.seeds import run_seed
from mobilekd.engine.step import NonFiniteLoss, StepModule, TrainStep
from mobilekd.errors import MobileKDError
from mobilekd.io import check_writable_dir, lock_folder, unlock_folder
from mobilekd.models import EmbeddingNet
from mobilekd.threads import set_threads
from mobilekd.weights.selection import initialise_from


def prepare_student(config: Config, device: torch.device,
                    threads: int) -> tuple[EmbeddingNet, dict | None, dict | None]:
    """The run's student on ``device``: seeded, built, initialised ``--init-from`` (a source of another family
    fails here, before anything is written). Returns (student, --student-weights source, --init-from record)."""
    torch.manual_seed(run_seed(config.seed, "student"))
    student, source = builders.build_student(config, threads)
    init_from = initialise_from(student, config.init_from) if config.init_from else None
    return student, source, init_from


class Trainer:
    """One training or distillation run of ``config``. ``hooks`` (default ``hooks.default_hooks()``) run around
    the epochs; ``teacher_test_embeddings`` shares the teacher's test pass with other runs of this process."""

    def __init__(self, config: Config, hooks: list[Hook] | None = None,
                 teacher_test_embeddings: TeacherTestEmbeddings | None = None):
        self.config = c = config.validate()
        self.out = check_writable_dir(c.out)
        self.context = init_from_env(c.device)
        resuming = c.resume and (self.out / STATE_FILE).is_file()
        owned = run_entries(self.out)[0] if resuming else check_run_folder(self.out, c) if self.context.is_main else []
        self.device = builders.select_device(c, self.context)
        if self.context.is_main:
            builders.log(c.losses_line())
        self.threads = set_threads(c.threads)  # 0: the idle cores (mobilekd.threads)
        self.hooks = default_hooks() if hooks is None else hooks
        self.teacher_test_embeddings = teacher_test_embeddings
        self.skipped_images, self.bn_unfolded, self.start_epoch, self.history = 0, None, 0, []
        self.untrained: dict | None = None  # test metrics before training (hooks.StartingPointHook)
        self.student, self.student_source, self.init_from = prepare_student(c, self.device, self.threads)
        if self.context.is_main:  # the run owns its folder (and the teacher cache it builds there)
            lock_folder(self.out)
            mark_run_folder(self.out, owned, len(builders.domain_specs(c)))
        self.student.to(self.device)
        self.domains = [self._domain(i, data, teacher) for i, (data, teacher) in enumerate(builders.domain_specs(c))]
        if self.student.spec.bn_folded and not resuming:  # a resumed run restores the unfolded weights
            self.bn_unfolded = builders.unfold_batchnorm(self.student, self.train_set, c.seed, self.device)
        channels_last = builders.prefers_channels_last(c)
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
        self._build_training(channels_last)
        if c.resume:
            resume(self)

    def _domain(self, position: int, data: str, teacher: str | None) -> Domain:
        domain, skipped = builders.build_domain(self.config, position, data, teacher, self.student, self.out,
                                                self.device, self.threads, self.context)
        self.skipped_images += skipped
        return domain

    def _build_training(self, channels_last: bool) -> None:
        """Losses, the (DDP-wrapped) step module, optimiser, schedule and the step."""
        c = self.config
        # the losses' own parameters (proxies, projections) start from the run's seed alone: building a teacher
        # cache draws from the global RNG (every DataLoader iterator takes a base seed), reusing one does not
        torch.manual_seed(run_seed(c.seed, "losses"))
        self.losses = torch.nn.ModuleDict({
            d.name: builders.build_losses(c, self.student, d.teacher, d.train_images.num_classes, d.feature_stages)
            for d in self.domains})
        self.losses.to(self.device)
        self.step_module = StepModule(self.student, self.losses)
        if self.context.enabled:  # gradients of the student and of the losses' parameters are averaged
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, find_unused_parameters=True,
                                                       device_ids=device_ids)
        self.optimizer, self.scheduler = builders.build_optimizer(c, self.student, self.losses, self.steps_per_epoch)
        self.step = TrainStep(self.step_module, self.optimizer, self.scheduler, c.loss_weight, self.device,
                              c.mixup_alpha, channels_last)

    # single-domain conveniences (the common case, and what the tests and the demo use)
    @property
    def primary(self) -> Domain:
        return self.domains[0]

    teacher = property(lambda self: self.primary.teacher)
    targets = property(lambda self: self.primary.targets)
    train_set = property(lambda self: self.primary.train_set)  # a ViewDataset
    feature_stages = property(lambda self: self.primary.feature_stages)

    @property
    def steps_per_epoch(self) -> int:
        return sum(len(domain.sampler) for domain in self.domains)

    @property
    def channels_last(self) -> bool:
        """Whether the step feeds the student channels-last batches (benchmarks switch it with the weights)."""
        return self.step.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.step.channels_last = value

    # ------------------------------------------------------------------ what the loop and the hooks call
    def train_step(self, domain: Domain, batch: dict) -> dict[str, float]:
        """One step; ``{"loss": total, loss name: value}``. A non-finite loss stops the run before the update."""
        try:
            return self.step(domain, batch).as_dict()
        except NonFiniteLoss as error:
            saved = self.out / "model.safetensors"  # written (or resumed from) by this run only if it has history
            where = (f"the last good checkpoint is {saved} (epoch {self.history[-1]['epoch']})"
                     if self.history and saved.is_file() else
                     "no checkpoint was written: it failed in the first epoch")
            raise MobileKDError(f"{error}; {where} (try a lower --lr or weight)") from None

    def evaluate(self) -> dict:
        return evaluate_domains(self.student, self.domains, self.config, self.device, self.teacher_test_embeddings)

    def save(self, epoch: int) -> None:
        save_checkpoint(self, epoch)

    def _epoch_batches(self):
        return epoch_batches(self.domains)

    def run(self) -> dict:
        return fit(self, self.hooks)


def evaluate_untrained(config: Config) -> dict:
    """Test metrics of ``config``'s student before any training: its pooled features (a new head would be
    random) through the runs' own evaluation, so the protocol is the trained runs'. Builds only what that
    needs -- the student (BatchNorm unfolded from training images when folded, which leaves the eval-mode
    function unchanged; the run's memory format) and the primary domain's data: no teacher, cache, losses or
    optimiser. Nothing is trained or saved, and the folder lock is released."""
    c = replace(config, embed_dim=0, resume=False).validate()
    out = check_writable_dir(c.out)
    device = builders.select_device(c, Context())
    threads = set_threads(c.threads)
    student, _, _ = prepare_student(c, device, threads)
    lock_folder(out)
    try:
        student.to(device)
        train_set, test_set, _ = builders.load_domain_data(c, 0, c.data, out)
        if student.spec.bn_folded:
            builders.unfold_batchnorm(student, train_set, c.seed, device)
        if builders.prefers_channels_last(c):
            student.to(memory_format=torch.channels_last)
        domain = Domain("main", c.data, train_set.images, test_set.images, None, train_set, test_set=test_set)
        return evaluate_domain(student, domain, c, device)["test"]
    finally:
        unlock_folder(out)


def evaluate_embedder(embedder, config: Config) -> dict:
    """Test metrics of a ready embedder -- an exported file's runner (``FileEmbedder``) or any model with a
    ``preprocess`` -- on ``config``'s test split (``data``, ``layout``, ``train_fraction``, ``preload``)
    through the runs' own evaluation. Unreadable test images are listed in ``config.out``."""
    c = config.validate()
    out = check_writable_dir(c.out)
    test_images = load_image_set(c.data, "test", c.layout, c.train_fraction)
    test_set = ViewDataset(test_images, {}, preload_side=c.preload, progress=c.progress)
    checked, _ = check_readable({"test": test_set}, out / "unreadable_images.txt", False, c.progress)
    test_set = checked["test"]
    domain = Domain("main", c.data, test_set.images, test_set.images, None, test_set, test_set=test_set)
    return evaluate_domain(embedder, domain, c, builders.select_device(c, Context()))["test"]


def train(config: Config, hooks: list[Hook] | None = None,
          teacher_test_embeddings: TeacherTestEmbeddings | None = None) -> dict:
    """Python API: train (or distil, when teacher losses are weighted) and return the final metrics."""
    return Trainer(config, hooks, teacher_test_embeddings).run()

"""The training engine shared by ``mobilekd.train`` (metric learning) and ``mobilekd.distill`` (+ teachers).

A run trains one student on one or more *domains*. A domain is a data set with its own teacher, teacher
targets, class-balanced sampler and metric loss: the primary domain is ``--data``/``--teacher``; every
``--domain DATA=TEACHER`` adds a specialist teacher on its own data (Feng et al.: several specialists, one
universal student). Each epoch interleaves the domains' batches round-robin, so every step distils one
domain's batch from that domain's teacher.

Per step (``step``): total = sum of weight x loss over the registered losses the configuration switches on
(``mobilekd.losses.registry``): a loss on ``labels`` (``metric``) sees the labeled rows; a loss on
``embeddings`` (``absolute``, ``relative``, ``rkd_distance``, ``rkd_angle``, ``kl``) the (student, teacher)
embeddings of all rows, mixed rows included; a loss on ``maps`` (``hint``, ``attention``) the feature maps of a
live teacher.
Per epoch (``hooks``): evaluation every ``eval_every`` epochs, a checkpoint (``checkpoint``: ``OUT/model.
safetensors`` + ``model.json`` for users and exporters, ``OUT/train_state.pt`` for ``--resume``),
``OUT/history.json``. Batches, views, mixup and dropout are seeded per (seed, epoch) (``seeds``), so a run
resumed after a kill reaches the same weights as one that never stopped (same device and thread count).

Modules: ``builders`` (each part of a run from a Config), ``step`` (one training step), ``evaluation``,
``checkpoint``, ``hooks``, ``loop`` (the epochs), ``trainer`` (:class:`Trainer`, ``train``,
``evaluate_untrained``, ``evaluate_embedder``), ``seeds``.
"""

from mobilekd.engine.builders import (BN_UNFOLD_IMAGES, Domain, build_losses, build_optimizer, build_student,
                                      build_teacher_cache, log, open_or_build_cache)
from mobilekd.engine.checkpoint import RESUME_KEYS, STATE_FILE, load_teacher_projections
from mobilekd.engine.evaluation import TeacherTestEmbeddings
from mobilekd.engine.hooks import Hook, default_hooks
from mobilekd.engine.seeds import phase_seed, run_seed
from mobilekd.engine.step import StepModule, StepOutput, TrainStep, mix_inputs_and_targets
from mobilekd.engine.trainer import Trainer, evaluate_embedder, evaluate_untrained, train

__all__ = ["BN_UNFOLD_IMAGES", "Domain", "Hook", "RESUME_KEYS", "STATE_FILE", "StepModule", "StepOutput",
           "TeacherTestEmbeddings", "TrainStep", "Trainer", "build_losses", "build_optimizer", "build_student",
           "build_teacher_cache", "default_hooks", "evaluate_embedder", "evaluate_untrained",
           "load_teacher_projections", "log", "mix_inputs_and_targets", "open_or_build_cache", "phase_seed",
           "run_seed", "train"]

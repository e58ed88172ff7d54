"""Every seed a run uses, from one named derivation: ``run_seed(seed, phase, index)``.

Each phase of a run draws from its own seed, derived from the run's ``--seed`` (and an index: the domain, the
epoch) alone, so what ran before cannot shift it and a resumed run draws what an uninterrupted one drew. The
derivations are those of earlier releases, kept value for value so that runs stay bit-identical:

=================  =====================================  =============================================
phase              seed                                   draws
=================  =====================================  =============================================
``student``        seed                                   torch: the student's initial weights
``views``          seed                                   the training views (``ViewSampler``)
``sampler``        seed + domain                          numpy: the P x K batches of a domain (the sampler
                                                         draws epoch e from [that seed, e, 7919])
``epoch``          seed x 100003 + epoch                  torch: mixup, dropout, live views of an epoch
``bn_unfold``      [seed, 1717]                           numpy: the images that unfold BatchNorm
``teacher_budget`` [seed, 4242]                           numpy: the images a ``--teacher-budget`` keeps
``losses``         ``phase_seed(seed, "losses")``         torch: the losses' own parameters
=================  =====================================  =============================================
"""

from __future__ import annotations

import zlib

import numpy as np


def phase_seed(seed: int, phase: str) -> int:
    """A seed for one phase of a run, derived from (seed, phase) alone, so what ran before cannot shift it."""
    return int(np.random.SeedSequence([seed, zlib.crc32(phase.encode())]).generate_state(1)[0])


# phase -> seed(run seed, index); the numbers are the historical ones (see the table above)
PHASES = {
    "student": lambda seed, index: seed,
    "views": lambda seed, index: seed,
    "sampler": lambda seed, index: seed + index,
    "epoch": lambda seed, index: seed * 100_003 + index,
    "bn_unfold": lambda seed, index: [seed, 1717],
    "teacher_budget": lambda seed, index: [seed, 4242],
    "losses": lambda seed, index: phase_seed(seed, "losses"),
}


def run_seed(seed: int, phase: str, index: int = 0):
    """The seed of ``phase`` (a name in ``PHASES``) of a run seeded ``seed``: an int, or for the numpy
    phases the entropy list to give ``np.random.default_rng``."""
    if phase not in PHASES:
        raise KeyError(f"unknown seed phase {phase!r}; known: {', '.join(PHASES)}")
    return PHASES[phase](seed, index)


def phase_rng(seed: int, phase: str) -> np.random.Generator:
    """A numpy generator for one phase (``bn_unfold``, ``teacher_budget``)."""
    return np.random.default_rng(run_seed(seed, phase))

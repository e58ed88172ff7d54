"""The training loop: epochs of round-robin domain batches, one :class:`~mobilekd.engine.step.TrainStep`
each, with the hooks (``mobilekd.engine.hooks``) around them.

Per epoch the samplers and torch's global RNG are seeded from (seed, epoch) (``mobilekd.engine.seeds``), so a
run resumed after a kill reaches the same weights as one that never stopped (same device and thread count).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from mobilekd.engine.builders import log
from mobilekd.engine.seeds import run_seed


def epoch_batches(domains: list):
    """The domains' batches, interleaved round-robin until every domain's epoch is exhausted."""
    iterators = [(domain, iter(domain.loader)) for domain in domains]
    while iterators:
        for entry in list(iterators):
            domain, iterator = entry
            try:
                yield domain, next(iterator)
            except StopIteration:
                iterators.remove(entry)


def train_epoch(run, epoch: int) -> dict:
    """One epoch of ``run`` (a :class:`mobilekd.engine.Trainer`); returns its record: mean losses, seconds."""
    c = run.config
    run.student.train()
    for domain in run.domains:
        domain.sampler.set_epoch(epoch)
    torch.manual_seed(run_seed(c.seed, "epoch", epoch))
    sums: dict[str, float] = {}
    started = time.time()
    bar = tqdm(epoch_batches(run.domains), total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{c.epochs}",
               disable=not c.progress or not run.context.is_main, leave=False)
    for step, (domain, batch) in enumerate(bar, 1):
        for key, value in run.train_step(domain, batch).items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{sums['loss'] / step:.4f}")
    return {"epoch": epoch + 1, "seconds": round(time.time() - started, 2),
            **{f"loss_{k}" if k != "loss" else k: v / run.steps_per_epoch for k, v in sums.items()}}


def summarize(run) -> dict:
    """The final metrics of a run (metrics.json): the last evaluated epoch's, per domain when several."""
    final = next((h for h in reversed(run.history) if "test" in h), {})
    summary = {"out": str(run.out), "test": final.get("test"), "student_to_teacher": final.get("student_to_teacher"),
               "teacher": final.get("teacher"), "epochs": run.config.epochs, "skipped_images": run.skipped_images}
    if len(run.domains) > 1:
        summary["domains"] = {d.name: {"data": d.data,
                                       **(final.get(d.name, {}) if i else
                                          {"test": final.get("test"), "teacher": final.get("teacher")})}
                              for i, d in enumerate(run.domains)}
    return summary


def fit(run, hooks: list) -> dict:
    """Train ``run`` from its ``start_epoch`` to ``config.epochs``; the summary (main process) or, in the other
    processes of a distributed run, ``{"out", "rank"}``."""
    active = [hook for hook in hooks if run.context.is_main or not hook.main_only]
    run.out.mkdir(parents=True, exist_ok=True)
    for hook in active:
        hook.on_train_start(run)
    if run.start_epoch >= run.config.epochs:
        log(f"{run.out}: already trained for {run.config.epochs} epochs")
    for epoch in range(run.start_epoch, run.config.epochs):
        record = train_epoch(run, epoch)
        for hook in active:
            hook.on_epoch_end(run, epoch, record)
    if not run.context.is_main:
        return {"out": str(run.out), "rank": run.context.rank}
    summary = summarize(run)
    for hook in active:
        hook.on_train_end(run, summary)
    return summary

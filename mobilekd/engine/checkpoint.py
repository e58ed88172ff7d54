"""Checkpoints in one place: what a run writes after each epoch and what ``--resume`` reads back.

``OUT/model.safetensors`` + ``model.json`` are for users and exporters (``mobilekd.models.save_model``);
``OUT/train_state.pt`` holds everything a resumed run needs (student, losses, optimiser, schedule, history);
``OUT/history.json`` the per-epoch records. A resumed run must share the checkpoint's ``Config.resume_keys()``
(the options that shape the data, the models and the teacher targets).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mobilekd.config import Config
from mobilekd.engine.builders import log
from mobilekd.errors import MobileKDError
from mobilekd.io import atomic_path, write_json
from mobilekd.models import save_model

STATE_FILE = "train_state.pt"
RESUME_KEYS = Config.resume_keys()  # the built-in losses' keys; resume checks use Config.resume_keys() itself


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


def changed_options(saved: dict, config: Config) -> list[str]:
    """The resume keys whose value in a checkpoint's config differs from ``config``'s."""
    return [key for key in Config.resume_keys() if saved.get(key) != getattr(config, key)]


def save_checkpoint(run, epoch: int) -> None:
    """After epoch ``epoch`` (0-based) of ``run`` (a :class:`mobilekd.engine.Trainer`): the model for users,
    the state for ``--resume`` (written atomically) and the history."""
    metadata = {"epoch": epoch + 1, "config": run.config.to_dict(), "skipped_images": run.skipped_images,
                "metrics": next((h["test"] for h in reversed(run.history) if "test" in h), None)}
    for key, value in (("bn_unfolded", run.bn_unfolded), ("student_weights", run.student_source),
                       ("init_from", run.init_from)):
        if value:
            metadata[key] = value
    save_model(run.student, run.out, metadata)
    state = {"epoch": epoch, "config": run.config.to_dict(), "student": run.student.state_dict(),
             "losses": run.losses.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "history": json.dumps(run.history),
             "bn_unfolded": run.bn_unfolded}
    with atomic_path(run.out / STATE_FILE) as tmp:
        torch.save(state, tmp)
    write_json(run.out / "history.json", run.history)


def resume(run) -> None:
    """Load ``run``'s state from its ``STATE_FILE`` (weights, optimiser, schedule, history, next epoch); refuses
    a checkpoint trained with other resume keys; from scratch when there is none."""
    path = run.out / STATE_FILE
    if not path.is_file():
        log(f"--resume: no {path}, starting from scratch")
        return
    state = torch.load(path, map_location=run.device, weights_only=True)
    changed = changed_options(state["config"], run.config)
    if changed:
        raise MobileKDError(f"--resume: {path} was trained with different {', '.join(changed)}; "
                            "use another --out or the same options")
    run.student.load_state_dict(state["student"])
    run.losses.load_state_dict(state["losses"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.start_epoch = int(state["epoch"]) + 1
    run.history = json.loads(state["history"])
    run.student.spec.bn_folded = False  # the saved weights were unfolded before the run's first step
    run.bn_unfolded = state.get("bn_unfolded")
    log(f"resumed from {path} after epoch {run.start_epoch}")

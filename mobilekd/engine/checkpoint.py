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
from mobilekd.engine.hooks import below_untrained
from mobilekd.errors import MobileKDError
from mobilekd.io import LOCK_FILE, atomic_path, foreign_entries, mark_owned, write_json
from mobilekd.models import save_model

STATE_FILE = "train_state.pt"
# options a resumed run takes from the state file, not from its own config (the optimiser's param groups hold
# them): a changed value would be recorded in model.json and have no effect, so it is refused like a resume key
RESTORED_KEYS = ("lr", "head_lr_scale", "weight_decay")
STATE_ENTRIES = ("epoch", "config", "student", "losses", "optimizer", "scheduler", "history")
RESUME_KEYS = Config.resume_keys()  # the built-in losses' keys; resume checks use Config.resume_keys() itself


# ------------------------------------------------------------------ the run folder is the run's own
RUN_MARKER = ".mobilekd-run.json"  # lists what runs wrote in OUT (``mobilekd.io.mark_owned``'s format)
RUN_TOOL = "mobilekd run"
RUN_FILES = ("config.json", "model.json", "model.safetensors", STATE_FILE, "history.json", "metrics.json",
             "teacher_cache", "unreadable_images.txt")
CHECKPOINT_FILES = ("model.safetensors", "model.json", STATE_FILE)  # a run that got this far is not replaced silently


def _run_name(name: str) -> bool:
    """Whether a run writes entries of this name in OUT (its files, per-domain caches and lists, their
    temporary files ``.NAME.XXXX.tmp`` left by a killed run)."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].split(".tmp")[0].rsplit(".", 1)[0]
    return name in RUN_FILES or name.startswith("teacher_cache_") or (
        name.startswith("unreadable_images_") and name.endswith(".txt"))


def _legacy_run(folder: Path) -> set[str]:
    """A folder written before runs left a marker: a run's entries count as its own when it holds a
    checkpoint or training state (a lone ``config.json`` is the user's)."""
    names = {p.name for p in folder.iterdir()}
    if not names & {STATE_FILE, "model.safetensors"}:
        return set()
    return {name for name in names if _run_name(name)}


def _is_run_folder(path: Path) -> bool:
    """Whether ``path`` is itself a run's folder (a run nested in another, e.g. a pre-training stage)."""
    return path.is_dir() and not path.is_symlink() and ((path / RUN_MARKER).is_file() or bool(_legacy_run(path)))


def run_entries(out: Path) -> tuple[list[str], list[str]]:
    """(entries runs wrote in ``out``, entries they did not), the lock, the marker and nested run folders (which
    a run never writes into) left out."""
    if not out.is_dir():
        return [], []
    foreign = [n for n in foreign_entries(out, RUN_MARKER, RUN_TOOL, _legacy_run) if n != LOCK_FILE]
    nested = [n for n in foreign if _is_run_folder(out / n)]
    owned = sorted(p.name for p in out.iterdir() if p.name not in (*foreign, LOCK_FILE, RUN_MARKER))
    return owned, [n for n in foreign if n not in nested]


def check_run_folder(out: Path, config: Config) -> list[str]:
    """Refuse (one error) to train into ``out`` when it holds files no run wrote, or -- unless ``--resume`` or
    ``--overwrite`` -- an earlier run's checkpoint (what a run stopped before its first checkpoint left, e.g.
    its list of unreadable images, is replaced as before); with ``--overwrite`` only the run's own files are replaced
    (a file no run wrote, of a name a run writes, is refused). Returns the run entries already there."""
    owned, foreign = run_entries(out)
    clash = [name for name in foreign if _run_name(name)]
    if foreign and (not config.overwrite or clash):
        shown = ", ".join((clash or foreign)[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise MobileKDError(f"--out {out} holds files no mobilekd run wrote ({shown}); refusing to write there: "
                            "choose an empty or new folder")
    trained = [name for name in CHECKPOINT_FILES if name in owned]
    if trained and not (config.resume or config.overwrite):
        raise MobileKDError(f"--out {out} holds an earlier run's checkpoint ({', '.join(trained)}); pass --resume "
                            "to continue it, --overwrite to replace its files, or choose another --out")
    return owned


def mark_run_folder(out: Path, owned: list[str], domains: int) -> None:
    """``OUT/RUN_MARKER``: the entries the run writes there (and those an earlier run wrote), so that a later
    run can tell them from the user's files."""
    from mobilekd.engine.builders import domain_name

    names = {*owned, *RUN_FILES}
    for position in range(1, domains):
        names |= {f"teacher_cache_{domain_name(position)}", f"unreadable_images_{domain_name(position)}.txt"}
    mark_owned(out, RUN_MARKER, RUN_TOOL, names)


def load_teacher_projections(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The absolute teacher loss's learned student->teacher projections ([teacher_dim, student_dim]; a domain
    has one when its teacher's dims differ from the student's) saved in a run's ``STATE_FILE``, keyed by their
    state-dict name ``<domain>.absolute.projection.weight``; {} when the run left no state or no projection.
    Public so that tools mapping a distilled student into its teacher's space (``mobilekd.compat teacher``)
    need not know the state file's layout."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return {}
    losses = read_state(path, "cpu", str(path)).get("losses", {})
    return {k: v.float() for k, v in losses.items() if k.endswith(".absolute.projection.weight") and v.ndim == 2}


def changed_options(saved: dict, config: Config) -> list[str]:
    """The resume keys (and ``RESTORED_KEYS``) whose value in a checkpoint's config differs from ``config``'s."""
    keys = [*Config.resume_keys(), *(key for key in RESTORED_KEYS if key in saved)]
    return [key for key in keys if saved.get(key) != getattr(config, key)]


def save_checkpoint(run, epoch: int) -> None:
    """After epoch ``epoch`` (0-based) of ``run`` (a :class:`mobilekd.engine.Trainer`): the model for users,
    the state for ``--resume`` (written atomically) and the history."""
    metadata = {"epoch": epoch + 1, "config": run.config.to_dict(), "skipped_images": run.skipped_images,
                "metrics": next((h["test"] for h in reversed(run.history) if "test" in h), None)}
    for key, value in (("bn_unfolded", run.bn_unfolded), ("student_weights", run.student_source),
                       ("init_from", run.init_from)):
        if value:
            metadata[key] = value
    if run.untrained is not None:  # the starting point, and whether this checkpoint fell below it
        metadata["untrained_metrics"] = run.untrained
        metadata["below_untrained"] = below_untrained(metadata["metrics"], run.untrained)
    save_model(run.student, run.out, metadata)
    state = {"epoch": epoch, "config": run.config.to_dict(), "student": run.student.state_dict(),
             "losses": run.losses.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "history": json.dumps(run.history),
             "bn_unfolded": run.bn_unfolded, "untrained": json.dumps(run.untrained)}
    with atomic_path(run.out / STATE_FILE) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as error:  # torch's zip writer reports a full disk as a RuntimeError
            raise OSError(f"{error}".splitlines()[0]) from None
    write_json(run.out / "history.json", run.history)


def read_state(path: Path, device, what: str) -> dict:
    """The object a ``STATE_FILE`` holds, read with ``weights_only=True`` (tensors and plain data only); a
    truncated file, or one holding anything else, is one error naming ``what`` -- never advice to load unsafely."""
    import pickle
    import zipfile

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        reason = ("it holds objects other than tensors and plain data" if isinstance(error, pickle.UnpicklingError)
                  else error.strerror or str(error) if isinstance(error, OSError)
                  else "truncated, or not a file torch.save wrote")
        raise MobileKDError(f"{what} is damaged or not a mobilekd training state ({reason})") from None
    if not isinstance(state, dict):
        raise MobileKDError(f"{what} is damaged or not a mobilekd training state (not a mapping)")
    return state


def load_state(path: Path, device) -> dict:
    """The training state at ``path`` for ``--resume`` (``read_state``), with every entry a run saves."""
    try:
        state = read_state(path, device, f"--resume: {path}")
    except MobileKDError as error:
        raise MobileKDError(f"{error}; resume from an intact copy, or start a new run in another --out") from None
    missing = [k for k in STATE_ENTRIES if k not in state] if isinstance(state, dict) else list(STATE_ENTRIES)
    if not missing and not isinstance(state["config"], dict):
        missing = ["config mapping"]
    if missing:
        raise MobileKDError(f"--resume: {path} is damaged or not a mobilekd training state (no "
                            f"{', '.join(missing)}); resume from an intact copy, or start a new run in another --out")
    return state


def resume(run) -> None:
    """Load ``run``'s state from its ``STATE_FILE`` (weights, optimiser, schedule, history, next epoch); refuses
    a checkpoint trained with other resume keys; from scratch when there is none."""
    path = run.out / STATE_FILE
    if not path.is_file():
        log(f"--resume: no {path}, starting from scratch")
        return
    state = load_state(path, run.device)
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
    run.untrained = json.loads(state.get("untrained") or "null")  # states of older runs have none
    log(f"resumed from {path} after epoch {run.start_epoch}")

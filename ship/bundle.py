"""Where ``mobilekd ship`` builds and how it publishes: never a half-shipped ``OUT``.

* ``OUT.work/`` (beside ``OUT``) holds the resumable work: the trained checkpoint, the exported folders, the
  measurements, the recall embeddings, the report and ``stages.json`` (what each stage was built from). A re-run
  reuses what is still valid (``ship.stages``); the folder may be deleted at any time (the next run rebuilds).
* The bundle is assembled in ``OUT.work/bundle/`` and put at ``OUT`` by renames only (``mobilekd.io.replace_folder``):
  ``OUT`` is either the previous bundle or the new one, never a mix. An existing ``OUT`` is replaced only when
  its marker (``MARKER``) says a ship wrote everything in it.
* A lock beside ``OUT`` (``fcntl``, ``mobilekd.io.lock_folder``) makes a second ``ship`` into the same ``OUT``
  fail at once with one error naming the running one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mobilekd.errors import MobileKDError
from mobilekd.io import check_replaceable, check_writable_dir, lock_folder, mark_owned, replace_folder

MARKER, TOOL = ".mobilekd-ship.json", "mobilekd-ship"
WORK_MARKER, WORK_TOOL = ".mobilekd-ship-work.json", "mobilekd-ship-work"


@dataclass(frozen=True)
class Layout:
    """The paths of one ship: the bundle ``out`` and its work folder beside it."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out.parent / f"{self.out.name}.work"

    @property
    def checkpoint(self) -> Path:
        return self.work / "checkpoint"

    @property
    def qat_checkpoint(self) -> Path:
        return self.work / "qat-checkpoint"

    def export(self, name: str) -> Path:
        return self.work / "exports" / name

    @property
    def results(self) -> Path:
        return self.work / "results"

    @property
    def embeddings(self) -> Path:
        return self.work / "embeddings"

    @property
    def report(self) -> Path:
        return self.work / "report"

    @property
    def android(self) -> Path:
        return self.work / "android"

    @property
    def staging(self) -> Path:
        return self.work / "bundle"


def claim(out: str | Path) -> Layout:
    """Check that ``out`` may become a bundle and take its lock, before any work: ``out`` must be new, empty or
    a previous bundle, its folder writable, and no other ship may be running into it."""
    out = Path(out).expanduser().absolute()
    check_replaceable(out, MARKER, TOOL, "--out")
    check_writable_dir(out.parent, f"--out {out}: its folder")
    layout = Layout(out)
    work = layout.work
    if work.exists() and not work.is_dir():
        raise MobileKDError(f"{work} (the work folder of --out {out}) exists and is not a folder")
    check_replaceable(work, WORK_MARKER, WORK_TOOL, f"the work folder of --out {out},")
    lock_folder(out, beside=True)
    work.mkdir(parents=True, exist_ok=True)
    mark_owned(work, WORK_MARKER, WORK_TOOL, [*WORK_ENTRIES, ".mobilekd.lock"])
    return layout


WORK_ENTRIES = ("stages.json", "checkpoint.key", "checkpoint", "exports", "results", "embeddings", "report", "android",
                "bundle")


def fresh(folder: Path) -> Path:
    """``folder`` emptied (a stage's output is rebuilt whole)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def copy_into(source: Path, staging: Path, name: str) -> None:
    """Copy a file or folder of the work into the bundle being assembled."""
    target = staging / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".mobilekd.*.lock"))
    else:
        shutil.copy2(source, target)


def publish(layout: Layout) -> None:
    """Mark the assembled bundle as a ship's and rename it onto ``OUT`` (the previous bundle, checked again just
    before, is moved aside and deleted only once the new one is in place)."""
    mark_owned(layout.staging, MARKER, TOOL)
    check_replaceable(layout.out, MARKER, TOOL, "--out")
    replace_folder(layout.staging, layout.out)

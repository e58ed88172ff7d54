"""``manifest.json``: what was shipped from what -- the sha256 of every file of the bundle, the source
checkpoint and its hash, the project's git commit, every command run, the machine, and each stage's times."""

from __future__ import annotations

import shlex
from pathlib import Path

from mobilekd.io import sha256_file

MANIFEST_FORMAT = "mobilekd-ship/1"


def file_hashes(bundle: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file under ``bundle`` (sorted), except ``skip``."""
    files = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        name = path.relative_to(bundle).as_posix()
        if name not in skip:
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def build_manifest(plan, stages, bundle: Path, skip: tuple[str, ...]) -> dict:
    from benchmarks.machine import describe, git_commit

    return {
        "format": MANIFEST_FORMAT,
        "source": {"checkpoint": str(plan.checkpoint), "sha256": sha256_file(plan.checkpoint / "model.safetensors"),
                   "trained_by_this_ship": plan.source is None, "recipe": plan.config},
        "data": {"path": plan.data, "layout": plan.layout, "train_fraction": plan.train_fraction,
                 "fingerprint": plan.data_fingerprint},
        "git_commit": git_commit(),
        "machine": describe(),
        "commands": ["mobilekd ship " + shlex.join(str(a) for a in plan.argv)] +
                    [c for record in stages.done.values() for c in record.get("commands", [])],
        "stages": {name: {k: record.get(k) for k in ("start", "end", "seconds", "skipped", "commands")}
                   for name, record in stages.done.items()},
        "files": file_hashes(bundle, skip),
    }


def verify(bundle: str | Path) -> list[str]:
    """The files of a published bundle whose sha256 differs from its manifest (or that are missing / extra)."""
    import json

    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = manifest["files"]
    actual = file_hashes(bundle, ("manifest.json", ".mobilekd-ship.json"))
    problems = [f"missing {name}" for name in listed if name not in actual]
    problems += [f"not in the manifest: {name}" for name in actual if name not in listed]
    problems += [f"changed {name}" for name in listed if name in actual and actual[name]["sha256"] !=
                 listed[name]["sha256"]]
    return problems

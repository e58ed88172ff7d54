"""Resumable, timed stages: each stage of a ship is skipped when what it was built from is unchanged.

A stage is a name, a ``key`` (a JSON-able description of everything its result depends on: options, and the
sha256 of its input files), its output paths and a function that builds them. ``Stages.run`` prints
``[i/N] name ...`` and, when done, the elapsed seconds; its record in ``stages.json`` (the key's sha256, the
outputs' sha256, start, end, seconds, the commands it ran) lets the next run skip it when the key and the
outputs are still the same -- a changed option, input file or a damaged output rebuilds it (and, through
their keys, every stage that read it).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from mobilekd.io import sha256_file, write_json


def key_hash(key) -> str:
    """sha256 of a stage key (sorted JSON; paths and other objects by their text)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def outputs_hash(paths: list[Path]) -> str | None:
    """sha256 over the outputs (files or folders), or None when one is missing."""
    digest = hashlib.sha256()
    for path in paths:
        if not path.exists():
            return None
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class Stages:
    """The stages of one ship, their records (``path``: stages.json) and progress lines."""

    def __init__(self, path: Path, total: int, say: Callable[[str], None] = print):
        self.path, self.total, self.say = path, total, say
        try:
            self.records = json.loads(path.read_text())
        except (OSError, ValueError):
            self.records = {}
        if not isinstance(self.records, dict):
            self.records = {}
        self.done: dict[str, dict] = {}  # this run's records, in order
        self.commands: list[str] = []  # commands the running stage ran (``ran``)

    def ran(self, command: str) -> None:
        """Record a command (as a user would type it) that the running stage executed."""
        self.commands.append(command)

    def run(self, name: str, key, outputs: list[Path], build: Callable[[], None]) -> dict:
        """Build ``outputs`` with ``build`` unless the last run built them from the same ``key``."""
        number = len(self.done) + 1
        digest, previous = key_hash(key), self.records.get(name)
        if previous and previous.get("key") == digest and previous.get("outputs") == outputs_hash(outputs):
            self.say(f"[{number}/{self.total}] {name} ... skipped: inputs unchanged (built {previous['end']})")
            record = {**previous, "skipped": True}
        else:
            self.say(f"[{number}/{self.total}] {name} ...")
            self.commands, started, start = [], time.perf_counter(), now()
            build()
            seconds = time.perf_counter() - started
            record = {"key": digest, "outputs": outputs_hash(outputs), "start": start, "end": now(),
                      "seconds": round(seconds, 2), "commands": list(self.commands), "skipped": False}
            self.records[name] = {k: v for k, v in record.items() if k != "skipped"}
            write_json(self.path, self.records)
            self.say(f"[{number}/{self.total}] {name} ... {seconds:.1f} s")
        self.done[name] = record
        return record

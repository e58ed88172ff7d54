"""Atomic file writes: a killed process never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")


# ------------------------------------------------------------------------------------------ destinations


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early, before any work, when ``path`` cannot become a writable folder.

    Walks up to the nearest existing ancestor: every existing part must be a folder, and the deepest one must
    accept a new file (probed by creating a temporary file: ``os.access`` says yes to root even on /proc or an
    immutable folder). Creates nothing that stays behind."""
    from mobilekd.errors import MobileKDError

    path = Path(path).expanduser()
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise MobileKDError(f"{what} {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise MobileKDError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(prefix=".mobilekd-probe.", dir=existing):
            pass
    except OSError as error:
        raise MobileKDError(f"{what} {path} is not writable ({existing}: {error.strerror or error})") from None
    return path


def check_writable_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early when the file ``path`` could not be written (its folder not creatable/writable, or a folder
    in its place)."""
    from mobilekd.errors import MobileKDError

    path = Path(path).expanduser()
    if path.is_dir():
        raise MobileKDError(f"{what} {path} is a folder; give a file name")
    check_writable_dir(path.parent, what)
    return path


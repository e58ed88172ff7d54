"""File helpers: atomic writes (a killed process never leaves a half-written artifact), folder locks, and the
one sha256 of a file or folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


# what a destination, not the program, is to blame for: a read-only file system, a full disk, no permission


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it. An OSError
    while writing (a full disk, a read-only file system) becomes a ``WriteError`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        from mobilekd.errors import WriteError

        if isinstance(error, WriteError):
            raise
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of every file in a folder (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")


def require_file(path: str | os.PathLike, what: str, error: type | None = None) -> Path:
    """``path`` if it is a file; else one ``error`` (default MobileKDError) saying it is missing -- or that it
    is a directory, which "not found" would hide."""
    from mobilekd.errors import MobileKDError

    path = Path(path)
    if path.is_dir():
        raise (error or MobileKDError)(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise (error or MobileKDError)(f"{what} not found: {path}")
    return path


# ------------------------------------------------------------------------------------------ destinations

NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, APFS, NTFS)


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early, before any work, when ``path`` cannot become a writable folder.

    Walks up to the nearest existing ancestor: every existing part must be a folder, and the deepest one must
    accept a new file (probed by creating a temporary file: ``os.access`` says yes to root even on /proc or an
    immutable folder). Creates nothing that stays behind."""
    from mobilekd.errors import MobileKDError

    path = Path(path).expanduser()
    too_long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:
        raise MobileKDError(f"{what}: the name {too_long[0][:40]}... in it is too long "
                            f"({len(os.fsencode(too_long[0]))} bytes; file systems allow {NAME_MAX})")
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


# ------------------------------------------------------------------------------------------ run locks

LOCK_FILE = ".mobilekd.lock"
_held: dict[str, int] = {}  # lock file -> open descriptor, for the life of this process


def lock_folder(folder: str | os.PathLike, beside: bool = False) -> Path:
    """Make ``folder`` this process's own: a second writer gets one error naming the holder.

    An advisory ``fcntl.flock`` on ``FOLDER/.mobilekd.lock`` (``beside``: ``PARENT/.mobilekd.<name>.lock``,
    for a folder that is replaced by a rename, like an export). The operating system drops the lock when the
    process dies however it dies, so after a ``kill -9`` the next run (``--resume``) takes it at once; the
    file holds pid, host, command and start time only to name the holder. Re-entrant within one process;
    released (and the file removed) by ``unlock_folder`` or at exit. Returns the lock file's path."""
    import atexit
    import datetime
    import fcntl
    import socket
    import sys

    from mobilekd.errors import MobileKDError

    folder = Path(folder).expanduser().absolute()
    lock = folder.parent / f".mobilekd.{folder.name}.lock" if beside else folder / LOCK_FILE
    if str(lock) in _held:
        return lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MobileKDError(
                f"{folder} is in use by another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"`{holder.get('command', '?')}`, since {holder.get('since', '?')}); one folder belongs to one "
                "run at a time: wait for it to finish or choose another output folder") from None
        try:  # the holder before us may have removed the file on release: lock the file that is there now
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[str(lock)] = fd
    if len(_held) == 1:
        atexit.register(_release_all)
    return lock


def unlock_folder(folder: str | os.PathLike, beside: bool = False) -> None:
    """Release a lock taken by ``lock_folder`` in this process (no-op if not held)."""
    folder = Path(folder).expanduser().absolute()
    _release(str(folder.parent / f".mobilekd.{folder.name}.lock" if beside else folder / LOCK_FILE))


def _release(lock: str) -> None:
    fd = _held.pop(lock, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(lock)  # while still locked, so no one else holds the inode being removed
    os.close(fd)


def _release_all() -> None:
    for lock in list(_held):
        _release(lock)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ owned folders
#
# A tool that replaces a whole output folder (an export) may delete only what it wrote there itself: it lists
# its entries in a marker file inside the folder, and a later run replaces the folder only when every entry is
# listed -- never a folder the user put files in, nor a checkpoint or run folder given by mistake.


def mark_owned(folder: str | os.PathLike, marker: str, tool: str, names=None) -> None:
    """Write ``FOLDER/marker`` listing ``names`` (default: every entry now in ``folder``) as written by ``tool``."""
    folder = Path(folder)
    if names is None:
        names = (p.name for p in folder.iterdir() if p.name != marker)
    write_json(folder / marker, {"tool": tool, "files": sorted(names)})


def foreign_entries(folder: str | os.PathLike, marker: str, tool: str, legacy=None) -> list[str]:
    """The entries of the existing ``folder`` that ``tool`` did not write there: those not listed by its marker
    (``mark_owned``) nor by ``legacy(folder)`` (a set of names, for folders made before markers existed)."""
    folder = Path(folder)
    owned: set[str] = set()
    try:
        data = json.loads((folder / marker).read_text())
        if isinstance(data, dict) and data.get("tool") == tool and isinstance(data.get("files"), list):
            owned = {str(name) for name in data["files"]} | {marker}
    except (OSError, ValueError):
        pass
    if not owned and legacy is not None:
        owned = set(legacy(folder))
    return sorted(p.name for p in folder.iterdir() if p.name not in owned)


def check_replaceable(folder: str | os.PathLike, marker: str, tool: str, what: str = "--out", legacy=None) -> None:
    """Refuse (one error naming the first foreign entries) to replace ``folder`` unless it is absent, empty, or
    holds only what ``tool`` wrote there."""
    from mobilekd.errors import MobileKDError

    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink():
        raise MobileKDError(f"{what} {folder} is a symbolic link; give the real folder")
    if not folder.is_dir():
        raise MobileKDError(f"{what} {folder} exists and is not a folder")
    foreign = foreign_entries(folder, marker, tool, legacy)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise MobileKDError(f"{what} {folder} holds files {tool} did not write ({shown}); refusing to replace it: "
                            "choose an empty or new folder")


def replace_folder(work: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the finished folder ``work`` (a sibling of ``out``) at ``out`` with renames only; a previous ``out``
    is moved aside first and deleted only once ``work`` is in place."""
    import shutil

    work, out = Path(work), Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

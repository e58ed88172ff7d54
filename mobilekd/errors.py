"""User-facing errors: one clear message and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class MobileKDError(Exception):
    """An error caused by the user's input (a path, a file, an option), explained in one message."""


class DataError(MobileKDError):
    """A data set that cannot be used: wrong path, unreadable image, empty class, too-small split."""


class ModelError(MobileKDError):
    """A model or checkpoint that cannot be built or loaded."""


def shown(value, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: a value from a hostile file (a YAML
    alias bomb expands to millions of items) must not become a megabyte-long error line. reprlib bounds the
    work as well as the text."""
    import reprlib

    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = limit
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = 20
    text = brief.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


UNSAFE_ADVICE = ("weights_only", "allow_pickle", "pickle", "arbitrary code")


def loader_reason(error: BaseException) -> str:
    """What a file loader's exception says, for an error message -- its type and first line, or only its type
    when the text advises an unsafe retry (torch.load's "re-run with weights_only=False", numpy's
    "allow_pickle=True"): a file from elsewhere must never be loaded with pickle enabled on our advice."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if not text or any(word in str(error).lower() for word in UNSAFE_ADVICE):
        return type(error).__name__
    return f"{type(error).__name__}: {text}"


class WriteError(MobileKDError, OSError):
    """A file that could not be written (a full disk, a read-only file system, no permission): one error line
    for the CLIs, and still an OSError for callers that handle those. ``str()`` is the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so MobileKDError (and Ctrl-C) end with one line on stderr and exit code 2 / 130.

    Set MOBILEKD_DEBUG=1 to see the full traceback.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except MobileKDError as error:
            if os.environ.get("MOBILEKD_DEBUG"):
                raise
            # a file name that is not UTF-8 is shown escaped (\udce9) rather than failing the print
            print(f"error: {error}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper

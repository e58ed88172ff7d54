"""The ``mobilekd`` command: one entry point for every tool, ``mobilekd SUBCOMMAND [ARGS]``.

Each subcommand hands ARGS unchanged to an existing module's ``main`` (``mobilekd export tflite CKPT --quantize
int8`` is ``python -m export.tflite CKPT --quantize int8``), so flags, help texts, errors and exit codes are that
module's own; ``mobilekd ship`` is the one command of its own (``ship.command``). ``python -m mobilekd`` is the
same command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand (words) -> the module whose main(argv) runs it
COMMANDS = {
    ("distill",): "mobilekd.distill",
    ("train",): "mobilekd.train",
    ("embed",): "mobilekd.embed",
    ("evaluate",): "mobilekd.evaluate",
    ("export", "onnx"): "export.onnx",
    ("export", "tflite"): "export.tflite",
    ("export", "coreml"): "export.coreml",
    ("export", "android"): "export.android",
    ("check",): "export.check",
    ("bench", "latency"): "benchmarks.latency",
    ("bench", "recall"): "benchmarks.recall",
    ("report",): "benchmarks.report",
    ("html-report",): "benchmarks.html_report",
    ("ship",): "ship.command",
}


def summary(module: str) -> str:
    """The first line of a module's docstring, read without importing it (``--help`` stays fast)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    try:
        with open(spec.origin) as handle:
            doc = ast.get_docstring(ast.parse(handle.read())) or ""
    except (OSError, AttributeError, SyntaxError):
        return ""
    return doc.strip().splitlines()[0].replace("``", "").rstrip(":") if doc.strip() else ""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: every subcommand listed; ``ship`` carries its real options (for --help and the
    documentation test), the others take their module's own (``mobilekd distill --help``)."""
    from ship.command import add_arguments

    parser = argparse.ArgumentParser(prog="mobilekd", description=__doc__.split("\n\n")[0],
                                     epilog="`mobilekd SUBCOMMAND --help` shows a subcommand's options.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module in COMMANDS.items():
        if words == ("ship",):
            add_arguments(commands.add_parser("ship", help=summary(module), description=summary(module)))
            continue
        if len(words) == 1:
            commands.add_parser(words[0], help=summary(module), add_help=False)
            continue
        if words[0] not in groups:
            group = commands.add_parser(words[0], help=f"{words[0]} subcommands")
            groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="FORMAT")
        groups[words[0]].add_parser(words[1], help=summary(module), add_help=False)
    return parser


def resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) for ``argv``, or None when it names no complete subcommand."""
    for length in (2, 1):
        module = COMMANDS.get(tuple(argv[:length]))
        if module is not None and len(argv) >= length:
            return module, argv[length:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = resolve(argv)
    if found is None:  # no subcommand, --help, an unknown word, or a group without its member
        parser = build_parser()
        parser.parse_args(argv)  # --help, or one usage error for an unknown word: exits
        parser.print_help(sys.stderr)  # no subcommand (or a group without its member): the list, exit 2
        return 2
    module, rest = found
    return int(importlib.import_module(module).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

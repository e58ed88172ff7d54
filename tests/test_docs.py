"""Every command the documentation shows must run as written: README.md and docs/*.md are read, each shell
command is extracted (fenced ``bash`` / ``sh`` / ``console`` blocks, and ``python -m`` / ``make`` lines or inline
code anywhere), and each ``python -m MODULE`` is checked in-process against MODULE's real argument parser: the
module exists, a subcommand exists, and every ``--flag`` is one the parser (or the subcommand's) accepts.
``make TARGET`` must be a Makefile target. Relative links must point to files that exist (and to a heading
that exists when they name an anchor in a Markdown file).

Fast on purpose: each module's parser is captured once, without running the command -- ``parse_args`` is
intercepted when the module's ``main`` calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROJECT_PACKAGES = ("mobilekd", "export", "benchmarks", "ship")
# flags a module's main() rewrites before parsing (mobilekd/train.py: --model reads better for fine-tuning)
ALIASES = {"mobilekd.train": {"--model": "--student"}}
SHELL_FENCES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


# ------------------------------------------------------------------------------------------ extraction


def split_fences(text: str) -> tuple[list[tuple[str, int, str]], str]:
    """(language, first line number, body) of every fenced block, and the text outside them."""
    blocks, outside, body, lang, start, fence = [], [], [], None, 0, None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, lang, start, body = match.group(2), match.group(3).lower(), number + 1, []
            outside.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((lang, start, "\n".join(body)))
            fence = None
            outside.append("")
        elif fence is not None:
            body.append(line)
            outside.append("")
        else:
            outside.append(line)
    return blocks, "\n".join(outside)


def _logical_lines(body: str, start: int):
    """Lines of a shell block with backslash continuations joined, as (line number, text)."""
    pending, first = "", start
    for number, line in enumerate(body.splitlines(), start):
        if not pending:
            first = number
        stripped = line.strip()
        if stripped.startswith("$ "):
            stripped = stripped[2:]
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield first, pending + stripped
        pending = ""
    if pending:
        yield first, pending


def is_command(line: str) -> bool:
    words = line.split()
    return bool(words) and (words[0] == "make" or _python_module(words) is not None)


def _python_module(words: list[str]) -> int | None:
    """Index in ``words`` of the module name after ``python -m`` / ``torchrun ... -m``, or None."""
    start = 0
    while start < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[start]):
        start += 1  # VAR=value prefixes
    if start >= len(words) or not (re.fullmatch(r"(\S*/)?python3?(\.\d+)?", words[start]) or words[start] == "torchrun"):
        return None
    for j in range(start + 1, len(words) - 1):
        if words[j] == "-m":
            return j + 1
        if not words[j].startswith("-") and words[start] != "torchrun":  # torchrun's options take values
            return None
    return None


def extract_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every shell command in a Markdown text (see the module docstring)."""
    blocks, outside = split_fences(text)
    commands = []
    for lang, start, body in blocks:
        for number, line in _logical_lines(body, start):
            if lang in SHELL_FENCES or is_command(line):
                for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                    if is_command(part):
                        commands.append((number, part))
    for match in re.finditer(r"`([^`]+)`", outside):
        code = " ".join(match.group(1).split())
        if is_command(code):
            commands.append((outside.count("\n", 0, match.start()) + 1, code))
    for number, line in enumerate(outside.splitlines(), 1):
        stripped = line.strip()
        if is_command(stripped) and "`" not in stripped:
            commands.append((number, stripped))
    return commands


# ------------------------------------------------------------------------------------------ checking


class _Captured(BaseException):
    """Raised instead of parsing (BaseException so that no ``except Exception`` in a CLI swallows it)."""


@contextlib.contextmanager
def _capturing_parsers(parsers: list):
    """Record every parser a module's ``main`` uses. ``parse_args`` stops ``main`` there; ``parse_known_args``
    (a CLI that forwards the flags it does not know, e.g. ``benchmarks.demo_recipe`` to the distillation
    config) returns placeholder values so ``main`` goes on to the parser that takes the rest."""

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise _Captured()

    def capture_known(self, *args, **kwargs):
        parsers.append(self)
        values = {a.dest: "x" if a.default is None else a.default for a in self._actions
                  if a.dest not in (argparse.SUPPRESS, "help")}
        return argparse.Namespace(**values), []

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = capture
    argparse.ArgumentParser.parse_known_args = capture_known
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved


@functools.lru_cache(maxsize=None)
def module_parsers(module: str) -> tuple[argparse.ArgumentParser, ...] | str:
    """The argparse parsers ``python -m module`` builds, or a one-line reason why there are none."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:
        return f"no module {module} ({error})"
    if spec is None:
        return f"no module named {module}"
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return ""  # a third-party module (pytest): its existence is all that is checked
    argv, parsers = sys.argv, []
    try:
        with _capturing_parsers(parsers), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
            imported = importlib.import_module(module)
            main = getattr(imported, "main", None)
            if spec.submodule_search_locations is None and callable(main):
                main(["--help"])
            else:  # a package: run its __main__ the way python -m does
                sys.argv = [module, "--help"]
                runpy.run_module(module, run_name="__main__", alter_sys=False)
    except _Captured:
        pass
    except (Exception, SystemExit) as error:
        if not parsers:
            return f"python -m {module} failed before building an argparse parser: {type(error).__name__}: {error}"
    finally:
        sys.argv = argv
    return tuple(parsers) or f"python -m {module} builds no argparse parser"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(*parsers: argparse.ArgumentParser) -> set[str]:
    return {flag for parser in parsers for action in parser._actions for flag in action.option_strings}


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    # placeholders: [--calib DATA], {none,fp16}, ...
    return [w.strip("[]") for w in words if w.strip("[]")]


def check_command(command: str, makefile: Path = ROOT / "Makefile") -> list[str]:
    """What is wrong with one documented command (empty list: nothing)."""
    words = _words(command)
    if words and words[0] == "make":
        return _check_make(words[1:], makefile)
    index = _python_module(words)
    if index is None:
        return []
    module = words[index]
    parsers = module_parsers(module)
    if isinstance(parsers, str):
        return [parsers] if parsers else []
    problems, known = [], _flags(*parsers)
    subcommands = _subcommands(parsers[0])
    current = f"python -m {module}"
    for word in words[index + 1:]:
        if subcommands and not word.startswith("-") and word not in ("...", "…"):
            if word not in subcommands:
                problems.append(f"{current}: unknown subcommand {word!r} (known: {', '.join(subcommands)})")
                return problems
            parser, current, subcommands = subcommands[word], f"{current} {word}", {}
            known = _flags(parser)
            continue
        if word.startswith("--") and len(word) > 2:
            flag = word.split("=", 1)[0]
            flag = ALIASES.get(module, {}).get(flag, flag) if current == f"python -m {module}" else flag
            if flag not in known:
                problems.append(f"{current}: no such option {flag}")
    return problems


def _check_make(words: list[str], makefile: Path) -> list[str]:
    text = makefile.read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))
    variables = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[?:+]?=", text, flags=re.M))
    problems = []
    for word in words:
        if "=" in word:
            name = word.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make: {name} is not a variable of the Makefile")
        elif not word.startswith("-") and word not in targets:
            problems.append(f"make: no target {word!r} in the Makefile")
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def check_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose target (or heading anchor) does not exist."""
    _, outside = split_fences(path.read_text())
    problems = []
    for match in LINK.finditer(re.sub(r"`[^`]*`", "", outside)):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.name}: link to missing {target}")
        elif anchor and resolved.suffix == ".md" and resolved.is_file():
            headings = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", split_fences(resolved.read_text())[1], flags=re.M)
            if anchor not in {_slug(h) for h in headings}:
                problems.append(f"{path.name}: link to missing heading {target}")
    return problems


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_documented_command_matches_its_parser(doc):
    commands = extract_commands(doc.read_text())
    problems = [f"{doc.name}:{number}: {problem}  [{command}]"
                for number, command in commands for problem in check_command(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_exists(doc):
    problems = check_links(doc)
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page_that_states_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, "README.md is a front page: move reference text to docs/"
    commands = [_words(command) for _, command in extract_commands(readme)]
    assert ["make", "test"] in commands and ["make", "demo"] in commands


def test_the_aliases_still_exist():
    import inspect

    for module, aliases in ALIASES.items():
        source = inspect.getsource(importlib.import_module(module).main)
        assert all(f'"{alias}"' in source for alias in aliases), f"{module}.main no longer rewrites {list(aliases)}"


def test_the_checker_finds_bad_commands_and_links(tmp_path):
    assert check_command("python -m mobilekd.distill --data D --kl-weight 1 --no-flip") == []
    assert check_command("python -m export.tflite CKPT [--quantize int8] [--calib DATA]") == []
    assert check_command("python -m mobilekd.weights import F.tflite --arch mobilenetv1_025 --out O") == []
    assert check_command("python -m benchmarks.demo_recipe kl --zero-shot --kl-weight 1 --student-size 96") == []
    assert check_command("python -m benchmarks.demo_recipe kl --kl-wieght 1") == [
        "python -m benchmarks.demo_recipe: no such option --kl-wieght"]
    assert check_command("python -m mobilekd.distill --data D --no-such-flag 1") == [
        "python -m mobilekd.distill: no such option --no-such-flag"]
    assert check_command("python -m mobilekd.weights import F --arch A --out O --bogus") == [
        "python -m mobilekd.weights import: no such option --bogus"]
    assert "unknown subcommand" in check_command("python -m mobilekd.compat frobnicate --data D")[0]
    assert check_command("python -m mobilekd ship --from C --out O --formats tflite") == []
    assert check_command("python -m mobilekd ship --out O --bogus 1") == ["python -m mobilekd ship: no such option --bogus"]
    assert "no module named" in check_command("python -m mobilekd.no_such_module --help")[0]
    assert check_command("make test-slow") == []
    assert check_command("make tests") == ["make: no target 'tests' in the Makefile"]
    doc = tmp_path / "bad.md"
    doc.write_text("# Title\n\n```bash\npython -m export.check FILE --against CKPT --wrong\n```\n"
                   "Text with `python -m benchmarks.recall M --data D --gallery` inline.\n"
                   "[ok](bad.md#title) [gone](missing.md) [anchor](#nowhere) [web](https://example.com)\n")
    found = [problem for _, command in extract_commands(doc.read_text()) for problem in check_command(command)]
    assert found == ["python -m export.check: no such option --wrong",
                     "python -m benchmarks.recall: no such option --gallery"]
    assert check_links(doc) == ["bad.md: link to missing missing.md", "bad.md: link to missing heading #nowhere"]

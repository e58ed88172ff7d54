"""The ``mobilekd`` command (``ship.cli``): every subcommand reaches its module's own parser, arguments pass
through unchanged, and ``python -m mobilekd ship`` is the same command."""

import subprocess
import sys

import pytest

from conftest import ROOT
from ship.cli import COMMANDS, main, resolve, summary


@pytest.mark.parametrize("words", list(COMMANDS), ids=[" ".join(w) for w in COMMANDS])
def test_every_subcommand_shows_its_modules_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    # the module's own parser answered (its prog), not the top-level one
    module = COMMANDS[words]
    assert f"python -m {module}" in usage or f"mobilekd {' '.join(words)}" in usage, usage[:200]


def test_every_subcommand_is_listed_with_a_summary(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words, module in COMMANDS.items():
        assert words[0] in text
        assert summary(module), module


def test_arguments_pass_through_unchanged():
    assert resolve(["export", "tflite", "CKPT", "--quantize", "int8"]) == ("export.tflite",
                                                                           ["CKPT", "--quantize", "int8"])
    assert resolve(["bench", "recall", "M", "--data", "D"]) == ("benchmarks.recall", ["M", "--data", "D"])
    assert resolve(["ship", "--out", "O"]) == ("ship.command", ["--out", "O"])
    assert resolve(["distill", "--config", "cub"]) == ("mobilekd.distill", ["--config", "cub"])
    assert resolve(["export"]) is None and resolve(["frobnicate"]) is None and resolve([]) is None


def test_a_subcommands_exit_code_is_its_modules(capsys):
    assert main(["distill", "--epochs", "0", "--data", "x"]) == 2
    assert capsys.readouterr().err.strip().startswith("error:")


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["export"], ["bench", "speed"]])
def test_no_or_an_unknown_subcommand_is_a_usage_error(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "usage: mobilekd" in capsys.readouterr().err


def test_python_dash_m_mobilekd_ship_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "mobilekd", "ship", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: mobilekd ship" in done.stdout
    for flag in ("--data", "--config", "--from", "--out", "--formats", "--precisions", "--gallery", "--threads",
                 "--calib-images", "--max-r1-drop"):
        assert flag in done.stdout

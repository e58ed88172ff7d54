"""The README's main job, shortened: the four rows print, and a re-run resumes without training (minutes: slow)."""

import json

import pytest

from mobilekd.demo import main as demo_main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path), "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teacher EfficientNet-Lite0" in out and "zero-shot" in out and "distilled student" in out
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    teacher, zero_shot, alone, distilled = rows  # in this order
    assert teacher.startswith("teacher") and zero_shot.startswith("student zero-shot")
    assert alone.startswith("student alone") and distilled.startswith("distilled student")
    assert rows[teacher]["R@1"] > 50
    # the shipped ImageNet weights are what the student starts from: far above chance (1/67 ~ 1.5 %) untrained
    assert rows[zero_shot]["R@1"] > 30
    # re-running finds both runs finished: nothing trains again (no new epoch), same numbers
    histories = {run: (tmp_path / run / "history.json").read_text() for run in ("student_alone", "distilled")}
    assert demo_main(["--out", str(tmp_path), "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert {run: (tmp_path / run / "history.json").read_text() for run in histories} == histories

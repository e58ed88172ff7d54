"""The README's main job, shortened: both students train and the table prints (minutes: marked slow)."""

import json

import pytest

from mobilekd.demo import main as demo_main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teacher EfficientNet-Lite0" in out and "distilled student" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["rows"]) == {"teacher EfficientNet-Lite0 (ImageNet, 128 px, 1280-d)",
                                    "student alone (MobileNetV1-0.25, 32 px, 128-d)",
                                    "distilled student (same, + absolute teacher loss)"}
    assert results["rows"]["teacher EfficientNet-Lite0 (ImageNet, 128 px, 1280-d)"]["R@1"] > 50
    # re-running finds both runs finished and only re-evaluates nothing: same numbers
    assert demo_main(["--out", str(tmp_path), "--epochs", "2", "--no-progress"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["rows"] == results["rows"]

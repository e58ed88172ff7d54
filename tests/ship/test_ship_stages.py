"""``ship.stages``: a stage is skipped only when its key and its outputs are what the last run recorded."""

import json

from ship.stages import Stages


def stage(tmp_path, key, lines, built):
    """Run one stage "make" that writes out.txt (counting its builds in ``built``) with ``key``."""
    out = tmp_path / "out.txt"
    stages = Stages(tmp_path / "stages.json", 1, lines.append)

    def build():
        built.append(key)
        stages.ran(f"make {key}")
        out.write_text(f"made from {key}")

    return stages.run("make", key, [out], build)


def test_same_key_and_outputs_skip_a_changed_key_or_a_damaged_output_rebuild(tmp_path):
    lines, built = [], []
    first = stage(tmp_path, {"option": 1}, lines, built)
    assert first["skipped"] is False and first["commands"] == ["make {'option': 1}"] and first["seconds"] >= 0
    assert lines[0] == "[1/1] make ..." and lines[1].startswith("[1/1] make ... ") and lines[1].endswith(" s")
    again = stage(tmp_path, {"option": 1}, lines, built)
    assert again["skipped"] is True and built == [{"option": 1}]
    assert again["commands"] == first["commands"]  # a skipped stage still names what made its outputs
    assert "skipped: inputs unchanged" in lines[-1]
    stage(tmp_path, {"option": 2}, lines, built)  # a changed option
    assert built == [{"option": 1}, {"option": 2}]
    (tmp_path / "out.txt").write_text("damaged")
    stage(tmp_path, {"option": 2}, lines, built)  # same key, output not what was built
    assert len(built) == 3
    (tmp_path / "out.txt").unlink()
    stage(tmp_path, {"option": 2}, lines, built)  # output missing
    assert len(built) == 4
    records = json.loads((tmp_path / "stages.json").read_text())
    assert set(records) == {"make"} and "skipped" not in records["make"]


def test_an_unreadable_record_file_means_build_everything(tmp_path):
    (tmp_path / "stages.json").write_text("{half written")
    lines, built = [], []
    stage(tmp_path, "k", lines, built)
    assert built == ["k"]


def test_the_train_stage_resumes_its_own_recipe_and_restarts_for_another(tmp_path, monkeypatch):
    """An interrupted training of the same recipe and data resumes in the work's checkpoint folder; one of
    another recipe is deleted first (distill --resume would refuse it)."""
    import types

    import mobilekd.distill
    from ship import steps
    from ship.bundle import Layout

    calls = []

    def fake_distill(argv):
        calls.append((argv[argv.index("--config") + 1], sorted(p.name for p in layout.checkpoint.glob("*"))))
        layout.checkpoint.mkdir(parents=True, exist_ok=True)
        (layout.checkpoint / "train_state.pt").write_text(argv[argv.index("--config") + 1])

    monkeypatch.setattr(mobilekd.distill, "main", types.SimpleNamespace(__wrapped__=fake_distill))
    layout = Layout(tmp_path / "out")
    layout.work.mkdir()
    recipes = {}
    for name, epochs in (("a.yaml", 1), ("b.yaml", 2)):
        recipes[name] = tmp_path / name
        recipes[name].write_text(f"epochs: {epochs}\n")
    stages = Stages(layout.work / "stages.json", 1, lambda line: None)

    def plan(recipe, unlabeled=None, fingerprint=""):
        return types.SimpleNamespace(config=str(recipes[recipe]), data="D", data_fingerprint="f", threads=1,
                                     unlabeled=unlabeled, unlabeled_fingerprint=fingerprint)

    steps.train(plan("a.yaml"), layout, stages)
    steps.train(plan("a.yaml"), layout, stages)  # same recipe: the folder is kept for --resume
    steps.train(plan("b.yaml"), layout, stages)  # another recipe: trained afresh
    assert calls == [(str(recipes["a.yaml"]), []), (str(recipes["a.yaml"]), ["train_state.pt"]),
                     (str(recipes["b.yaml"]), [])]
    assert stages.commands[-1].startswith("python -m mobilekd.distill --config ") and "--resume" in stages.commands[-1]
    assert "--unlabeled" not in stages.commands[-1]
    steps.train(plan("b.yaml", "G", "g1"), layout, stages)  # the gallery's photos join: trained afresh
    steps.train(plan("b.yaml", "G", "g1"), layout, stages)
    steps.train(plan("b.yaml", "G", "g2"), layout, stages)  # other photos in it: afresh again
    assert [listing for _, listing in calls[3:]] == [[], ["train_state.pt"], []]
    assert stages.commands[-1].endswith("--resume --unlabeled G")

"""benchmarks.transfer: distill_cub result files -> one row per (data set, size, arm, seed), gap shares."""

import json

from benchmarks import transfer


def result_file(path, title, seeds, rows, per_seed=None, costs=None):
    result = {"command": "python -m benchmarks.distill_cub ...", "machine": {"cpu": "test"}, "git_commit": "abc",
              "args": {"title": title, "data": f"/d/{title}", "seeds": seeds, "student_size": 128}, "rows": rows}
    if per_seed:
        result["seeds"] = per_seed
    if costs:
        result.update(costs=costs, cache_costs={"0": {"cpu_minutes": 2.0}})
    path.write_text(json.dumps(result))
    return str(path)


def m(r1, map_r):
    return {"R@1": r1, "MAP@R": map_r}


def test_rows_arms_seeds_and_gap_share(tmp_path, capsys):
    name = "MobileNetV1-0.25 (ImageNet, 128 px) "
    first = result_file(tmp_path / "a.json", "cub100-227", "0",
                        {"teacher efficientnet_lite2 (ImageNet, 192 px)": m(80.0, 40.0), name + "zero_shot": m(60.0, 20.0),
                         name + "kl_label_free+lr=0.001": m(70.0, 25.0),
                         name + "kl_label_free+unlabeled=/x/cub_test_unlabeled": m(75.0, 27.0)},
                        costs={name + "kl_label_free+lr=0.001": {"0": {"cpu_minutes": 3.0, "wall_minutes": 1.5}}})
    second = result_file(tmp_path / "b.json", "cub100-227", "1,2",
                         {name + "kl_label_free": m(71.0, 26.0)},
                         per_seed={name + "kl_label_free": {"1": m(72.0, 26.0), "2": m(70.0, 26.0)}})
    assert transfer.main([first, second, "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    arms = {(r["arm"], r["seed"]): r for r in rows}
    assert set(arms) == {("teacher", 0), ("zero_shot", 0), ("recipe", 0), ("recipe", 1), ("recipe", 2),
                         ("recipe+test_photos", 0)}
    assert all(r["dataset"] == "cub100" and r["student_size"] == 128 for r in rows)
    assert arms[("recipe", 0)]["cpu_minutes"] == 5.0  # the arm's run and the teacher cache built for it
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| recipe | 3 | 70.67 +- 1.15 | 25.67 +- 0.58 | 53 % |" in table  # (70.67 - 60) / (80 - 60)
    assert transfer.main([first, "--out", str(tmp_path / "lever"), "--levers", "--dataset", "cub100"]) == 0
    lever = json.loads((tmp_path / "lever" / "summary.json").read_text())["rows"]
    assert all("dataset" not in r and r["arm"] != "teacher" for r in lever)
    lever_table = (tmp_path / "lever" / "table.md").read_text()  # the gap from the teacher row, and the cost
    assert "| recipe | 1 | 70.00 | 25.00 | 50 % | 5.0 |" in lever_table


def test_a_file_that_is_not_a_result_is_one_error(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    assert transfer.main([str(tmp_path / "bad.json"), "--out", str(tmp_path / "out")]) != 0
    assert "not a benchmarks.distill_cub result" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_arms_of_a_file_and_a_list_of_runs(tmp_path):
    name = "MobileNetV1-0.25 (ImageNet, 128 px) "
    study = result_file(tmp_path / "study.json", "cub100-227", "0",
                        {name + "zero_shot": m(60.0, 20.0), name + "alone": m(58.0, 18.0)})  # alone at another lr
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps({"rows": [{"seed": 0, "test": m(75.0, 27.0)}, {"seed": 1, "test": m(74.0, 26.0)}]}))
    out = tmp_path / "out"
    assert transfer.main([f"{study}:zero_shot", f"{runs}:recipe+test_photos", "--dataset", "cub100",
                          "--out", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("recipe+test_photos", 0), ("recipe+test_photos", 1),
                                                          ("zero_shot", 0)]
    assert transfer.main([str(runs), "--dataset", "cub100", "--out", str(tmp_path / "x")]) != 0  # arm needed
    runs.write_text(json.dumps({"data": {"path": "/d/cub100-227"},
                                "rows": [{"seed": 0, "test": m(75.0, 27.0), "cpu_minutes": 9.04}]}))
    assert transfer.main([f"{runs}:recipe+test_photos", "--out", str(out), "--levers"]) == 0  # data set: data.path
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    assert row["cpu_minutes"] == 9.0 and row["arm"] == "recipe+test_photos"


def test_a_run_continued_from_a_larger_run_and_a_teacher_at_another_size_are_named_so(tmp_path):
    name = "MobileNetV1-0.25 (ImageNet, 128 px) "
    continued = name + ("kl_label_free+pretrained=False+student=/r/seed0/224px/recipe_a+b"
                        "+unlabeled=/x/cub_test_unlabeled")
    first = result_file(tmp_path / "a.json", "cub100-227", "0", {continued: m(72.0, 28.0)})
    teacher = json.loads((tmp_path / "a.json").read_text())
    teacher["args"]["teacher_size"] = 260
    teacher["rows"] = {"teacher efficientnet_lite2 (ImageNet, 260 px)": m(84.0, 40.0),
                       name + "kl_label_free+unlabeled=/x/cub_test_unlabeled": m(71.0, 27.0)}
    (tmp_path / "b.json").write_text(json.dumps(teacher))
    assert transfer.main([first, str(tmp_path / "b.json"), "--out", str(tmp_path / "out")]) == 0
    arms = {r["arm"] for r in json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]}
    assert arms == {"recipe+after_224px+test_photos", "teacher_260px", "recipe+test_photos+teacher_260px"}


def test_a_longer_schedule_given_as_a_flag_is_named_like_one_given_with_set(tmp_path):
    name = "MobileNetV1-0.25 (ImageNet, 224 px) "
    path = tmp_path / "a.json"
    result_file(path, "cub100-227", "0", {name + "kl_label_free+unlabeled=/x/cub_test_unlabeled": m(80.0, 33.0)})
    result = json.loads(path.read_text())
    result["args"].update(epochs=12, teacher_size=192)
    path.write_text(json.dumps(result))
    assert transfer.main([str(path), "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["recipe+test_photos+epochs=12"]

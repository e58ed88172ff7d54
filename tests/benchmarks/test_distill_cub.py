"""benchmarks.distill_cub: every arm's configuration (pure checks, nothing trained) and one tiny end-to-end run."""

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import distill_cub
from benchmarks.distill_cub import ARMS, arm_config, parse_args, pretrain_config
from mobilekd.errors import MobileKDError


def args_for(*extra, out="runs/x"):
    return parse_args(["--data", "DATA", "--out", out, *extra])


def test_every_arm_builds_a_valid_config():
    args = args_for("--seeds", "0,1")
    for arm in ARMS:
        for seed in (0, 1):
            config = arm_config(args, arm, seed).validate()
            assert config.seed == seed and config.resume
            assert Path(config.out).parent == Path("runs/x") / f"seed{seed}" / "128px"
    outs = {arm_config(args, arm).out for arm in ARMS}
    assert len(outs) == len(ARMS)  # no two arms share a run folder


def test_imagenet_default_and_random_students():
    imagenet = arm_config(args_for(), "alone")
    assert (imagenet.student, imagenet.pretrained, imagenet.embed_dim, imagenet.lr) == ("mobilenetv1_025", True, 0, 5e-4)
    assert imagenet.out.endswith("imagenet_alone")
    random = arm_config(args_for("--student-init", "random"), "alone")
    assert (random.student, random.pretrained, random.embed_dim, random.lr) == ("mobilenetv1_025", False, 128, 2e-3)
    overridden = arm_config(args_for("--embed-dim", "64", "--lr", "1e-4"), "kl")
    assert (overridden.embed_dim, overridden.lr) == (64, 1e-4)


def test_teacher_losses_and_caches():
    args = args_for()
    shared = str(Path("runs/x/seed0/teacher_cache"))
    free = arm_config(args, "kl_label_free")
    assert (free.metric_loss, free.kl_weight, free.kl_temperature, free.teacher_cache) == ("none", 1.0, 0.1, shared)
    both = arm_config(args, "absolute_relative")
    assert (both.absolute_weight, both.relative_weight, both.teacher_cache) == (30.0, 0.3, shared)
    assert arm_config(args, "lowres").lowres == 32 and arm_config(args, "lowres").teacher_cache == shared
    assert arm_config(args, "hint_at").teacher_cache is None  # feature maps: live teacher
    for arm in ("zero_shot", "alone", "init_random", "init_imagenet"):
        config = arm_config(args, arm)
        assert not config.uses_teacher and config.teacher_cache is None
        assert config.absolute_weight == config.kl_weight == 0 and config.metric_loss == "normalized_softmax"


def test_semi_is_inductive_and_the_transductive_arm_is_separate():
    args = args_for("--unlabeled-data", "PHOTOS")
    semi = arm_config(args, "semi")
    assert semi.unlabeled == "PHOTOS" and semi.teacher_cache == str(Path("runs/x/seed0/teacher_cache_unlabeled"))
    transductive = arm_config(args, "semi_transductive")
    assert transductive.unlabeled == str(Path("DATA") / "images") and transductive.teacher_cache is None


def test_initialisation_ablation():
    args = args_for("--student-init", "random", "--pretrain-epochs", "3", "--epochs", "5")
    selection = arm_config(args, "init_selection").validate()  # --init-from alone with a tf_ student is accepted
    assert selection.student == "tf_mobilenetv1_025" and not selection.pretrained
    assert selection.init_from == str(Path("runs/x/imports/mobilenetv1_050_mobilenet_v1_0.5_160_quant"))
    assert (selection.embed_dim, selection.lr) == (0, 5e-4)
    imagenet = arm_config(args, "init_imagenet")  # the ablation keeps its own init whatever --student-init says
    assert imagenet.pretrained and imagenet.out.endswith("128px/init_imagenet")
    assert not arm_config(args, "init_random").pretrained
    finetune, stage1 = arm_config(args, "init_imagenet_pretrain"), pretrain_config(args)
    assert finetune.student == stage1.out and not finetune.pretrained and finetune.epochs == 5
    assert (stage1.student, stage1.pretrained, stage1.metric_loss, stage1.kl_weight, stage1.epochs) == (
        "mobilenetv1_025", True, "none", 1.0, 3)
    assert stage1.unlabeled == args.unlabeled_data and stage1.teacher_cache.endswith("teacher_cache_unlabeled")
    assert not finetune.uses_teacher
    random_stage1 = pretrain_config(args, "init_random_pretrain")  # pre-training a random student: its own init
    assert (random_stage1.student, random_stage1.pretrained, random_stage1.embed_dim, random_stage1.lr) == (
        "mobilenetv1_025", False, 128, 2e-3)
    selected, selected_stage1 = arm_config(args, "init_selection_pretrain"), pretrain_config(args, "init_selection_pretrain")
    assert selected_stage1.init_from == selection.init_from and selected_stage1.out.endswith("init_selection_pretrain/stage1")
    assert selected.student == selected_stage1.out and selected.init_from is None  # selected once, in stage 1


def test_row_names_say_init_and_size():
    args = args_for("--student-size", "224")
    assert distill_cub.row_name(args, "kl_label_free") == "MobileNetV1-0.25 (ImageNet, 224 px) kl_label_free"
    assert distill_cub.row_name(args, "init_random").startswith("MobileNetV1-0.25 (random init, 224 px)")


@pytest.mark.parametrize("argv, message", [
    (["--arms", "alone,nonsense"], "unknown arm(s) nonsense"),
    (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
])
def test_bad_arms_and_seeds_exit_2(argv, message, capsys, tmp_path):
    assert distill_cub.main(["--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def test_set_overrides_every_arm_in_its_own_folder_and_row():
    args = args_for("--set", "kl_temperature=0.05", "--set", "epochs=3")
    config = arm_config(args, "kl_label_free")
    assert (config.kl_temperature, config.epochs, config.metric_loss) == (0.05, 3, "none")
    assert Path(config.out).name == "imagenet_kl_label_free+epochs=3+kl_temperature=0.05"
    assert distill_cub.row_name(args, "kl_label_free").endswith("kl_label_free+epochs=3+kl_temperature=0.05")
    assert config.teacher_cache == str(Path("runs/x/seed0/teacher_cache"))  # variants share the seed's cache
    for bad, message in (("nope=1", "Config option"), ("epochs", "KEY=VALUE"), ("epochs=two", "not an integer")):
        with pytest.raises(MobileKDError, match=message):
            arm_config(args_for("--set", bad), "alone")


def test_unlabeled_limit_takes_evenly_spaced_photos(folder_dataset, tmp_path):
    from conftest import CLASS_COLORS, make_image
    from mobilekd.data.training import training_images

    photos = tmp_path / "photos"
    for i in range(10):
        make_image(str(photos / "any" / f"{i}.png"), seed=900 + i, label_color=CLASS_COLORS[0])
    semi = arm_config(args_for("--unlabeled-data", str(photos), "--unlabeled-limit", "4"), "semi")
    labeled = training_images(dataclasses.replace(semi, unlabeled=None, data=str(folder_dataset)))
    images = training_images(dataclasses.replace(semi, data=str(folder_dataset)))
    extra = images.keys[len(labeled):]
    assert extra == [f"any/{i}.png" for i in (0, 3, 6, 9)] and (images.labels[len(labeled):] == -1).all()
    everything = training_images(dataclasses.replace(semi, data=str(folder_dataset), unlabeled_limit=0))
    assert len(everything) == len(labeled) + 10


def test_unknown_arm_in_arm_config():
    with pytest.raises(MobileKDError, match="unknown arm 'nope'"):
        arm_config(args_for(), "nope")


def test_tiny_end_to_end_zero_shot_and_label_free_kl(folder_dataset, tmp_path):
    results = tmp_path / "results"
    argv = tiny_argv(folder_dataset, tmp_path, "zero_shot,kl_label_free")
    assert distill_cub.main(argv) == 0
    saved = json.loads(Path(str(results) + ".json").read_text())
    assert set(saved) >= {"command", "machine", "args", "rows"} and saved["args"]["student_size"] == 32
    names = list(saved["rows"])
    assert names == ["teacher efficientnet_lite0 (ImageNet, 32 px)", "MobileNetV1-0.25 (ImageNet, 32 px) zero_shot",
                     "MobileNetV1-0.25 (ImageNet, 32 px) kl_label_free"]
    for metrics in saved["rows"].values():
        assert {"R@1", "MAP@R"} <= set(metrics) and 0 <= metrics["R@1"] <= 100
    assert "sd" not in saved  # one seed
    cost = saved["costs"]["MobileNetV1-0.25 (ImageNet, 32 px) kl_label_free"]["0"]
    assert cost["cpu_minutes"] > 0 and cost["wall_minutes"] > 0  # what each arm cost, for the lever tables
    assert saved["cache_costs"]["0"]["cpu_minutes"] > 0  # the seed's teacher cache was built by this call
    assert (tmp_path / "runs" / "seed0" / "teacher_cache").is_dir()
    # finished arms are reused, not re-trained
    first = (tmp_path / "runs" / "seed0" / "32px" / "imagenet_kl_label_free" / "metrics.json").stat().st_mtime_ns
    assert distill_cub.main(argv) == 0
    assert (tmp_path / "runs" / "seed0" / "32px" / "imagenet_kl_label_free" / "metrics.json").stat().st_mtime_ns == first
    again = json.loads(Path(str(results) + ".json").read_text())
    assert again["rows"] == saved["rows"]
    # the reused cache is charged what building it cost, as recorded by the call that built it
    assert again["cache_costs"]["0"] == saved["cache_costs"]["0"]
    assert again["costs"] == {}  # reused arms cost nothing new: no cost is recorded for them


def tiny_argv(data, tmp_path, arms, *extra):
    return ["--data", str(data), "--out", str(tmp_path / "runs"), "--arms", arms, "--student-size", "32",
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-classes", "2", "--images-per-class", "2", "--views", "1",
            "--teacher", "efficientnet_lite0", "--teacher-size", "32", "--threads", "1", "--quiet",
            "--results", str(tmp_path / "results"), *extra]


def test_several_seeds_give_mean_sd_and_per_seed_rows(tmp_path, monkeypatch):
    def fake_run(args, arm, seed, teacher_tests=None):  # no training: the aggregation alone
        r1 = {"alone": 10.0, "kl": 20.0}[arm] + 2 * seed
        return {"test": {"R@1": r1, "MAP@R": r1 / 2, "queries": 5}, "teacher": {"R@1": 50.0, "MAP@R": 25.0}}

    monkeypatch.setattr(distill_cub, "run_arm", fake_run)
    monkeypatch.setattr(distill_cub, "build_cache", lambda config, folder: None)
    assert distill_cub.main(["--data", str(tmp_path), "--out", str(tmp_path / "runs"), "--arms", "alone,kl", "--seeds", "0,1,2",
                             "--results", str(tmp_path / "results")]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    kl = "MobileNetV1-0.25 (ImageNet, 128 px) kl"
    assert saved["rows"][kl] == {"R@1": 22.0, "MAP@R": 11.0, "queries": 5}
    assert saved["sd"][kl] == {"R@1": 2.0, "MAP@R": 1.0}
    assert saved["seeds"][kl]["2"]["R@1"] == 24.0
    report = (tmp_path / "results.md").read_text()
    assert "kl 2.00 / 1.00" in report and "kl 26.3%" in report  # (22 - 12) / (50 - 12) of the gap closed


def test_unlabeled_arms_share_one_teacher_cache(folder_dataset, tmp_path):
    from conftest import CLASS_COLORS, make_image

    photos = tmp_path / "photos"
    for i in range(6):
        make_image(str(photos / "any" / f"{i}.png"), seed=900 + i, label_color=CLASS_COLORS[0])
    argv = tiny_argv(folder_dataset, tmp_path, "semi,init_imagenet_pretrain", "--unlabeled-data", str(photos))
    assert distill_cub.main(argv) == 0
    runs = tmp_path / "runs" / "seed0"
    assert (runs / "teacher_cache_unlabeled").is_dir()
    assert not list(runs.glob("32px/*/teacher_cache"))  # opened, not rebuilt per arm
    finetune = json.loads((runs / "32px" / "init_imagenet_pretrain" / "config.json").read_text())
    stage1 = json.loads((runs / "32px" / "init_imagenet_pretrain" / "stage1" / "config.json").read_text())
    assert finetune["student"] == str(runs / "32px" / "init_imagenet_pretrain" / "stage1")
    assert (stage1["metric_loss"], stage1["unlabeled"], stage1["pretrained"]) == ("none", str(photos), True)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    stage1_rows = [name for name in rows if name.endswith("init_imagenet_pretrain stage 1 only (label-free KL, 1 epochs)")]
    assert len(stage1_rows) == 1 and 0 <= rows[stage1_rows[0]]["R@1"] <= 100  # what the first stage alone reached


def test_weight_selection_from_folded_batchnorm_is_unfolded_before_training(folder_dataset, tmp_path):
    """The init_selection arm selects from an imported (folded-BN) checkpoint: the selected BNs are identity plus
    bias, so the Trainer must unfold them like an imported student's, or train-mode BN destroys the features."""
    import dataclasses

    from mobilekd.config import Config
    from mobilekd.engine import Trainer
    from mobilekd.io import unlock_folder
    from mobilekd.models import create_model, save_model

    source = create_model("tf_mobilenetv1_025", embed_dim=0, pretrained=True, size=32)  # the shipped, folded weights
    assert source.spec.bn_folded
    save_model(source, tmp_path / "large")
    config = Config(data=str(folder_dataset), student="tf_mobilenetv1_025", init_from=str(tmp_path / "large"),
                    embed_dim=0, student_size=32, teacher=None, batch_classes=2, images_per_class=2, epochs=1,
                    threads=1, progress=False, out=str(tmp_path / "run"))
    trainer = Trainer(config)
    unlock_folder(trainer.out)
    assert trainer.init_from["bn_folded"] and trainer.bn_unfolded and trainer.bn_unfolded["images"] > 0
    plain = Trainer(dataclasses.replace(config, init_from="efficientnet_lite0", student="efficientnet_lite_025",
                                        out=str(tmp_path / "plain")))  # an unfolded source stays as it is
    unlock_folder(plain.out)
    assert "bn_folded" not in plain.init_from and plain.bn_unfolded is None


def test_identical_arms_run_once(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(distill_cub, "run_arm", lambda args, arm, seed, teacher_tests=None: ran.append(arm) or {"test": {"R@1": 1.0}})
    monkeypatch.setattr(distill_cub, "build_cache", lambda config, folder: None)
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--arms", "zero_shot,alone,init_imagenet,init_random"]
    assert distill_cub.main(argv) == 0
    assert ran == ["zero_shot", "alone", "init_random"]  # init_imagenet is alone on an ImageNet student
    ran.clear()
    assert distill_cub.main([*argv, "--student-init", "random"]) == 0
    assert ran == ["zero_shot", "alone", "init_imagenet"]  # ... and init_random alone on a random one
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert "MobileNetV1-0.25 (random init, 128 px) init_random" in rows


def test_missing_inputs_stop_before_training(folder_dataset, tmp_path, capsys):
    argv = tiny_argv(folder_dataset, tmp_path, "alone,semi,semi_transductive", "--unlabeled-data", str(tmp_path / "no"))
    assert distill_cub.main(argv) == 2
    err = capsys.readouterr().err
    assert "--unlabeled-data" in err and "semi_transductive" in err and not (tmp_path / "runs").exists()

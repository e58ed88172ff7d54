import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mobilekd.config import Config
from mobilekd.distill import main as distill_main
from conftest import tiny_config
from mobilekd.engine import Trainer
from mobilekd.errors import MobileKDError


def test_short_distillation_lowers_the_loss_and_writes_a_checkpoint(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, tmp_path / "run", epochs=6, steps_per_epoch=6, lr=5e-3)
    summary = Trainer(config).run()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0]
    assert history[-1]["loss_absolute"] < history[0]["loss_absolute"]
    assert set(history[-1]) >= {"loss_metric", "loss_absolute", "loss_relative", "test"}
    assert 0 <= summary["test"]["R@1"] <= 100 and summary["teacher"]["R@1"] > 0
    model_json = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model_json["epoch"] == 6 and model_json["spec"]["arch"] == "mobilenetv1_025"
    assert (tmp_path / "run" / "teacher_cache" / "manifest.json").is_file()


def test_teacher_targets_are_those_of_the_same_views(folder_dataset, tmp_path):
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "run"))
    index, view = 3, 1
    item = trainer.train_set.with_inputs({"teacher": trainer.teacher.preprocess})[(index, view)]
    with torch.no_grad():
        expected = trainer.teacher(item["teacher"][None])[0]
    cached = trainer.targets(torch.tensor([index]), torch.tensor([view]))[0]
    assert torch.allclose(cached, expected, atol=1e-5)


def test_teacher_test_embeddings_are_shared_between_runs_that_ask_for_it(folder_dataset, tmp_path, monkeypatch):
    import mobilekd.engine.evaluation as evaluation
    from mobilekd.engine import TeacherTestEmbeddings

    shared = TeacherTestEmbeddings()
    first = Trainer(tiny_config(folder_dataset, tmp_path / "a"), teacher_test_embeddings=shared).evaluate()
    embedded, real = [], evaluation.embed_image_set
    monkeypatch.setattr(evaluation, "embed_image_set",
                        lambda model, *a, **k: embedded.append(model) or real(model, *a, **k))
    second = Trainer(tiny_config(folder_dataset, tmp_path / "b"), teacher_test_embeddings=shared)
    assert second.evaluate()["teacher"] == first["teacher"]
    assert embedded == [second.student]  # the student is embedded, the teacher's test pass is reused
    alone = Trainer(tiny_config(folder_dataset, tmp_path / "c"))  # no sharing asked: its own teacher pass
    alone.evaluate()
    assert embedded[1:] == [alone.student, alone.teacher]


def test_head_lr_scale_gives_the_new_head_its_own_learning_rate(folder_dataset, tmp_path):
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "run", teacher="none", absolute_weight=0.0,
                                  relative_weight=0.0, lr=1e-3, head_lr_scale=10.0))
    body, head = trainer.optimizer.param_groups[:2]
    head_ids = {id(p) for p in trainer.student.head.parameters()}
    assert {id(p) for p in head["params"]} == head_ids and head_ids and not head_ids & {id(p) for p in body["params"]}
    assert (body["initial_lr"], head["initial_lr"]) == (1e-3, pytest.approx(1e-2))


def test_resume_after_interruption_reproduces_the_uninterrupted_run(folder_dataset, tmp_path, monkeypatch):
    Trainer(tiny_config(folder_dataset, tmp_path / "straight", eval_every=10)).run()

    original_save = Trainer.save

    def save_then_die(self, epoch):
        original_save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # killed right after the second epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(folder_dataset, tmp_path / "killed", eval_every=10)).run()
    monkeypatch.setattr(Trainer, "save", original_save)
    assert json.loads((tmp_path / "killed" / "model.json").read_text())["epoch"] == 2

    resumed = Trainer(tiny_config(folder_dataset, tmp_path / "killed", eval_every=10, resume=True))
    assert resumed.start_epoch == 2
    resumed.run()
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_resume_refuses_changed_options(folder_dataset, tmp_path):
    Trainer(tiny_config(folder_dataset, tmp_path / "run", epochs=1)).run()
    with pytest.raises(MobileKDError, match="different embed_dim"):
        Trainer(tiny_config(folder_dataset, tmp_path / "run", epochs=2, embed_dim=8, resume=True))


def test_config_file_and_flags(tmp_path, folder_dataset):
    config_file = tmp_path / "kd.yaml"
    config_file.write_text("relative-weight: 0.5\nepochs: 7\nstudent: lcnet_035\n")
    config = Config.from_args(["--config", str(config_file), "--data", str(folder_dataset), "--epochs", "9"])
    assert (config.relative_weight, config.epochs, config.student) == (0.5, 9, "lcnet_035")
    (tmp_path / "bad.yaml").write_text("temperature: 3\n")
    with pytest.raises(MobileKDError, match="unknown configuration key"):
        Config.from_args(["--config", str(tmp_path / "bad.yaml"), "--data", "x"])


@pytest.mark.parametrize("argv, message", [
    (["--data", "/no/such/folder"], "data path does not exist: /no/such/folder"),
    (["--epochs", "0", "--data", "x"], "--epochs must be >= 1"),
    (["--metric-loss", "arcface", "--data", "x"], "--metric-loss must be one of"),
    (["--data", "x", "--config", "/no/file.yaml"], "config file not found"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, message, capsys):
    assert distill_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err and err.count("\n") == 0


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_cli_reports_corrupt_image_with_exit_code_2(folder_dataset, tmp_path):
    (folder_dataset / "class_1" / "2.png").write_bytes(b"\x89PNG broken")
    result = subprocess.run([sys.executable, "-m", "mobilekd.distill", "--data", str(folder_dataset), "--out",
                             str(tmp_path / "r"), "--no-progress", "--student-size", "32", "--teacher-size", "32"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "1 unreadable image(s)" in result.stderr and "class_1/2.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_every_teacher_loss_combines_in_one_run(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, tmp_path / "all", epochs=1, steps_per_epoch=2, rkd_distance_weight=1.0,
                         rkd_angle_weight=2.0, kl_weight=1.0, hint_weight=1.0, attention_weight=10.0,
                         feature_layers="blocks.3=-2,-1=-1", eval_every=5)
    trainer = Trainer(config)
    assert trainer.targets is None  # feature maps keep the teacher live
    assert set(trainer.losses["main"]) == {"metric", "absolute", "relative", "rkd_distance", "rkd_angle", "kl", "hint",
                                   "attention"}
    assert trainer.feature_stages == ([3, 4], [3, 4])
    trainer.run()
    record = json.loads((tmp_path / "all" / "history.json").read_text())[0]
    assert all(record[f"loss_{name}"] > 0 for name in trainer.losses["main"])


def test_unknown_feature_layer_lists_the_valid_ones(folder_dataset, tmp_path):
    with pytest.raises(MobileKDError, match=r"the student has no feature stage 'blocks\.9'; valid stages: 0=blocks\.0"):
        Trainer(tiny_config(folder_dataset, tmp_path / "r", hint_weight=1.0, feature_layers="blocks.9=-1"))


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_checkpoint(folder_dataset, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "r", epochs=2, eval_every=5))
    real_forward = trainer.losses["main"]["relative"].forward
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        return real_forward(*args) * (float("nan") if calls["n"] > 4 else 1.0)  # breaks in epoch 2

    monkeypatch.setattr(trainer.losses["main"]["relative"], "forward", poisoned)
    with pytest.raises(MobileKDError, match=r"loss term relative became nan at step 5"):
        trainer.run()
    saved = json.loads((tmp_path / "r" / "model.json").read_text())
    assert saved["epoch"] == 1  # the good epoch-1 checkpoint survived


def test_semi_supervised_batches_add_unlabeled_images_for_the_teacher_losses(folder_dataset, tmp_path):
    from conftest import make_image

    for i in range(10):
        make_image(str(tmp_path / "unlabeled" / f"{i}.jpg"), seed=500 + i)
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "r", unlabeled=str(tmp_path / "unlabeled"),
                                  unlabeled_per_batch=5, epochs=1, eval_every=5))
    assert len(trainer.primary.train_images) == 24 + 10
    batch = next(iter(trainer.primary.loader))
    assert (batch["label"][:12] >= 0).all() and (batch["label"][12:] == -1).all() and len(batch["label"]) == 17
    assert trainer.targets.embeddings.shape[0] == 34  # the teacher cache covers the unlabeled images too
    values = trainer.train_step(trainer.primary, batch)
    assert values["metric"] > 0 and values["absolute"] > 0


def test_label_free_budget_queries_the_teacher_on_budget_images_only(folder_dataset, tmp_path):
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "r", teacher_budget=10, metric_loss="none",
                                  absolute_weight=0.0, relative_weight=0.0, kl_weight=1.0, mixup_alpha=1.0,
                                  epochs=1, eval_every=5))
    domain = trainer.primary
    assert len(domain.train_images) == 10 and (domain.train_images.labels == -1).all()
    assert trainer.targets.embeddings.shape[:2] == (10, 2)  # 10 images x 2 views: all the teacher ever saw
    assert set(trainer.losses["main"]) == {"kl"}
    trainer.run()
    with pytest.raises(MobileKDError, match="--teacher-budget 999 is larger than the 24 training images"):
        Trainer(tiny_config(folder_dataset, tmp_path / "r2", teacher_budget=999))


def test_output_space_mixup_hand_computed(monkeypatch):
    from mobilekd.engine import mix_inputs_and_targets

    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, shape: torch.tensor([0.25, 1.0]))
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.tensor([1, 0]))
    inputs = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed_in, mixed_t = mix_inputs_and_targets(inputs, targets, alpha=0.4)
    assert mixed_in.shape == (4, 3, 2, 2) and torch.equal(mixed_in[:2], inputs)
    assert torch.allclose(mixed_in[2], torch.full((3, 2, 2), 0.75))  # 0.25*0 + 0.75*1
    assert torch.equal(mixed_in[3], inputs[1])                       # lam = 1: image 1 itself
    assert torch.allclose(mixed_t[2], torch.tensor([0.25, 0.75]) / math.sqrt(0.25**2 + 0.75**2))
    assert torch.allclose(mixed_t[3], targets[1])


def test_two_specialist_teachers_one_universal_student(folder_dataset, tmp_path):
    import zipfile

    from conftest import make_image

    archive = tmp_path / "second.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for c in range(6):
            for i in range(4):
                path = tmp_path / "tmp" / f"{c}_{i}.png"
                make_image(str(path), seed=900 + 10 * c + i, size=(16, 16))
                out.write(path, f"second/char{c}/{i}.png")
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "r", absolute_weight=0.0, relative_weight=0.0,
                                  kl_weight=1.0, domain=[f"{archive}=efficientnet_lite1"], epochs=1, eval_every=1,
                                  batch_classes=3, images_per_class=2))
    assert [d.name for d in trainer.domains] == ["main", "domain1"]
    assert trainer.domains[1].teacher.spec.arch == "efficientnet_lite1"
    assert trainer.steps_per_epoch == 8  # 4 batches per domain, interleaved
    assert [d.name for d, _ in trainer._epoch_batches()] == ["main", "domain1"] * 4
    summary = trainer.run()
    assert set(summary["domains"]) == {"main", "domain1"}
    assert summary["domains"]["domain1"]["test"]["queries"] == 12


def test_multi_branch_master_teacher(folder_dataset, tmp_path):
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "r", teacher="efficientnet_lite0,efficientnet_lite1",
                                  absolute_weight=0.0, relative_weight=0.0, kl_weight=1.0, epochs=1, eval_every=1))
    assert trainer.teacher.embed_dim == 2560
    summary = trainer.run()
    assert summary["teacher"]["R@1"] > 0


def test_train_cli_fine_tunes_a_pretrained_teacher(folder_dataset, tmp_path, capsys):
    from mobilekd.train import main as train_main

    out = tmp_path / "teacher"
    assert train_main(["--data", str(folder_dataset), "--model", "efficientnet_lite0", "--pretrained",
                       "--embed-dim", "32", "--student-size", "32", "--metric-loss", "multi_similarity",
                       "--epochs", "2", "--steps-per-epoch", "2", "--batch-classes", "4", "--images-per-class", "3",
                       "--lr", "1e-4", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["spec"]["arch"] == "efficientnet_lite0" and meta["spec"]["embed_dim"] == 32
    assert "efficientnet_lite0" in capsys.readouterr().out
    # the fine-tuned teacher is a checkpoint folder distillation accepts as --teacher
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "kd", teacher=str(out), epochs=1))
    assert trainer.teacher.embed_dim == 32 and not any(p.requires_grad for p in trainer.teacher.parameters())


def test_teacher_projection_is_readable_from_a_saved_run(folder_dataset, tmp_path):
    """What Trainer.save writes, engine.load_teacher_projections (and compat's student -> teacher check) reads."""
    from mobilekd.compat import absolute_projection
    from mobilekd.engine import load_teacher_projections

    assert load_teacher_projections(tmp_path / "none") == {}
    trainer = Trainer(tiny_config(folder_dataset, tmp_path / "run", relative_weight=0.0, epochs=1))
    trainer.save(0)
    weight = trainer.losses["main"]["absolute"].projection.weight
    projections = load_teacher_projections(tmp_path / "run")
    assert list(projections) == ["main.absolute.projection.weight"]
    assert torch.equal(projections["main.absolute.projection.weight"], weight.detach().cpu())
    name, array = absolute_projection(str(tmp_path / "run" / "model.safetensors"), weight.shape[0])
    assert name == "main.absolute.projection.weight" and array.shape == (weight.shape[0], 16)
    assert absolute_projection(str(tmp_path / "run"), weight.shape[0] + 1) is None

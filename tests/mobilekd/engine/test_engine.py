"""mobilekd.engine's parts, each used without building a whole run: evaluating an untrained student, building
a teacher cache, one training step; the named seeds; the loss settings of the configuration."""

import numpy as np
import pytest
import torch

from mobilekd.config import Config
from mobilekd.engine import (Domain, StepModule, Trainer, TrainStep, build_losses, build_optimizer, build_student,
                             build_teacher_cache, evaluate_untrained, phase_seed, run_seed)
from mobilekd.engine.step import NonFiniteLoss
from mobilekd.errors import MobileKDError
from mobilekd.losses import Option, register_loss, unregister_loss


def tiny(data, out, **overrides) -> Config:
    values = dict(data=str(data), out=str(out), student="mobilenetv1_025", student_size=32, embed_dim=16,
                  teacher="efficientnet_lite0", teacher_size=32, views=2, epochs=1, batch_classes=4,
                  images_per_class=2, steps_per_epoch=2, progress=False, threads=1, preload=64)
    return Config(**{**values, **overrides})


def test_evaluate_untrained_builds_no_teacher_and_matches_a_runs_evaluation(folder_dataset, tmp_path):
    config = tiny(folder_dataset, tmp_path / "zero", pretrained=True, embed_dim=0, kl_weight=1.0)
    metrics = evaluate_untrained(config)
    assert metrics["queries"] == 24 and 0 <= metrics["R@1"] <= 100
    assert not (tmp_path / "zero" / "teacher_cache").exists()  # no teacher, no cache, nothing trained
    run = Trainer(tiny(folder_dataset, tmp_path / "run", pretrained=True, embed_dim=0, kl_weight=1.0))
    assert run.evaluate()["test"] == metrics  # the same student, BatchNorm unfolding and protocol as a run's


def test_a_teacher_cache_built_alone_is_the_one_a_run_opens(folder_dataset, tmp_path):
    config = tiny(folder_dataset, tmp_path / "run", absolute_weight=1.0)
    cache = build_teacher_cache(config, tmp_path / "cache")
    assert cache.embeddings.shape[:2] == (24, 2)
    run = Trainer(tiny(folder_dataset, tmp_path / "run", absolute_weight=1.0, teacher_cache=str(tmp_path / "cache")))
    assert run.targets.path == tmp_path / "cache"  # the run's own manifest check accepted it
    item = run.train_set.with_inputs({"teacher": run.teacher.preprocess})[(5, 1)]
    with torch.no_grad():
        expected = run.teacher(item["teacher"][None])[0]
    assert torch.allclose(run.targets(torch.tensor([5]), torch.tensor([1]))[0], expected, atol=1e-5)
    with pytest.raises(MobileKDError, match="no teacher loss"):
        build_teacher_cache(tiny(folder_dataset, tmp_path / "r", teacher=None), tmp_path / "none")


def test_one_training_step_without_a_run():
    config = Config(data="unused", student_size=32, embed_dim=8, teacher=None, lr=1e-2, epochs=1)
    torch.manual_seed(0)
    student, _ = build_student(config, threads=1)
    losses = torch.nn.ModuleDict({"main": build_losses(config, student, num_classes=4)})
    optimizer, scheduler = build_optimizer(config, student, losses, steps_per_epoch=2)
    step = TrainStep(StepModule(student, losses), optimizer, scheduler, config.loss_weight, torch.device("cpu"))
    domain = Domain("main", "unused", train_images=None, test_images=None, teacher=None, train_set=None)
    batch = {"student": torch.rand(8, 3, 32, 32), "label": torch.arange(4).repeat_interleave(2)}
    before = [p.detach().clone() for p in student.parameters()]
    output = step(domain, batch)
    assert set(output.parts) == {"metric"} and output.parts["metric"] > 0
    assert output.total == pytest.approx(output.parts["metric"])  # weight 1
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters())) and scheduler.last_epoch == 1
    after = [p.detach().clone() for p in student.parameters()]
    with pytest.raises(NonFiniteLoss, match="loss term metric became nan at step 2"):
        step(domain, {**batch, "student": torch.full((8, 3, 32, 32), float("nan"))})
    assert all(torch.equal(a, b) for a, b in zip(after, student.parameters()))  # stopped before the update


def test_named_seeds_keep_their_historical_values():
    assert run_seed(7, "student") == run_seed(7, "views") == 7
    assert run_seed(7, "sampler", 2) == 9 and run_seed(7, "epoch", 3) == 7 * 100_003 + 3
    assert run_seed(7, "bn_unfold") == [7, 1717] and run_seed(7, "teacher_budget") == [7, 4242]
    assert run_seed(7, "losses") == phase_seed(7, "losses") == 1670745911  # as before the engine split
    with pytest.raises(KeyError, match="unknown seed phase"):
        run_seed(7, "dropout")


def test_loss_settings_live_in_one_mapping_with_flat_and_nested_keys(tmp_path):
    config = Config(kl_weight=1, losses={"rkd_angle": {"weight": 2.0}})
    assert config.losses["kl"] == {"weight": 1, "temperature": 0.1} and config.rkd_angle_weight == 2.0
    config.kl_temperature = 0.3
    assert config.losses["kl"]["temperature"] == 0.3 and config.to_dict()["kl_temperature"] == 0.3
    recipe = tmp_path / "nested.yaml"
    recipe.write_text("losses:\n  kl: {weight: 1.5, temperature: 0.05}\n  metric: {loss: none}\nlr: 1e-3\n")
    loaded = Config.from_args(["--config", str(recipe), "--data", "x", "--kl-temperature", "0.2"])
    assert (loaded.kl_weight, loaded.kl_temperature, loaded.metric_loss, loaded.lr) == (1.5, 0.2, "none", 0.001)
    recipe.write_text("losses:\n  kl: {tau: 1}\n")
    with pytest.raises(MobileKDError, match="unknown configuration key: losses.kl.tau"):
        Config.from_args(["--config", str(recipe), "--data", "x"])
    with pytest.raises(AttributeError):
        config.kl_tau  # noqa: B018


def test_registering_a_loss_does_not_redefine_config():
    init, fields_before = Config.__init__, Config.__dataclass_fields__.copy()
    register_loss("late", inputs="embeddings", options=[Option("power", float, 2.0)])(torch.nn.L1Loss)
    try:
        assert Config(late_weight=1.0).late_weight == 1.0 and Config().late_power == 2.0
        assert "--late-power" in Config.parser("p", "").format_help()
    finally:
        unregister_loss("late")
    assert Config.__init__ is init and Config.__dataclass_fields__ == fields_before


def test_resume_keys_come_from_the_fields():
    assert set(Config.resume_keys()) == {
        "data", "layout", "train_fraction", "unlabeled", "unlabeled_limit", "student", "student_weights",
        "pretrained", "embed_dim", "head_bn", "student_size", "teacher", "teacher_size", "views", "teacher_budget",
        "domain", "metric_loss", "batch_classes", "images_per_class", "seed", "init_from"}


@pytest.mark.parametrize("values, message", [
    ({"teacher": "t.onnx", "hint_weight": 1.0}, "need a teacher network with feature maps"),
    ({"teacher": "a,b", "attention_weight": 1.0}, "need a teacher network with feature maps"),
    ({"teacher": "t.npz", "kl_weight": 1.0, "views": 2}, "precomputed embeddings has one view per image"),
    ({"teacher": "efficientnet_lite0", "domain": ["d=t.npz"], "kl_weight": 1.0}, "use --views 1"),
])
def test_teacher_kinds_are_checked_by_the_configuration(values, message):
    with pytest.raises(MobileKDError, match=message):
        Config(data="x", **values).validate()
    assert np.isfinite(Config(data="x", **{**values, "views": 1, "hint_weight": 0.0, "attention_weight": 0.0})
                       .validate().lr)


def test_a_run_from_weights_reports_its_starting_point_beside_the_trained_student(folder_dataset, tmp_path):
    import json

    from mobilekd.engine import train

    config = tiny(folder_dataset, tmp_path / "run", pretrained=True, embed_dim=0, kl_weight=1.0)
    summary = train(config)
    before = evaluate_untrained(tiny(folder_dataset, tmp_path / "zero", pretrained=True, embed_dim=0))
    assert summary["untrained"] == before  # measured before the first step, by the run's own protocol
    assert summary["below_untrained"] == (summary["test"]["R@1"] < before["R@1"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert metrics["untrained"] == model["untrained_metrics"] == before
    assert model["below_untrained"] == metrics["below_untrained"]
    scratch = train(tiny(folder_dataset, tmp_path / "scratch"))  # nothing to lose: no extra evaluation
    assert "untrained" not in scratch
    continued = train(tiny(folder_dataset, tmp_path / "continued", student=str(tmp_path / "run"), kl_weight=1.0))
    assert continued["untrained"] == summary["test"]  # a trained checkpoint as --student: it too has a start to keep


def test_a_run_that_ends_below_its_start_says_so_plainly(capsys):
    from types import SimpleNamespace

    from mobilekd.distill import summary_table
    from mobilekd.engine.hooks import StartingPointHook

    run = SimpleNamespace(untrained={"R@1": 60.0, "MAP@R": 20.0})
    summary = {"test": {"R@1": 55.0, "MAP@R": 21.0}}
    StartingPointHook().on_train_end(run, summary)
    assert summary["below_untrained"] is True and summary["untrained"] == run.untrained
    printed = capsys.readouterr()
    assert "training made the student worse" in printed.out + printed.err
    assert "WARNING" in summary_table(summary, "student") and "before training" in summary_table(summary, "student")
    better = {"test": {"R@1": 61.0, "MAP@R": 19.0}}
    StartingPointHook().on_train_end(run, better)
    assert better["below_untrained"] is False and "WARNING" not in summary_table(better, "student")


def test_fewer_training_classes_than_a_batch_asks_for_use_them_all_with_more_images_each(folder_dataset, tmp_path):
    run = Trainer(tiny(folder_dataset, tmp_path / "run", batch_classes=50, images_per_class=2, steps_per_epoch=1))
    classes = run.train_set.images.num_classes
    assert classes < 50 and (run.primary.sampler.P, run.primary.sampler.K) == (classes, -(-100 // classes))
    assert run.run()["test"]["queries"] > 0  # it trains, where it used to stop on the recipe's default of 16

"""The loss registry: a loss registered from outside the package gets its configuration keys and flags and
trains, with no edit to any other file; the built-in losses keep every key and flag they had."""

import json

import pytest
import torch
from torch import nn

from mobilekd.config import Config
from mobilekd.distill import main as distill_main
from mobilekd.errors import MobileKDError
from mobilekd.losses import Option, get_loss, loss_specs, register_loss, unregister_loss
from mobilekd.losses.distances import pairwise_distances

# every loss key a config file or a script could hold before the registry existed (README's losses table)
OLD_LOSS_KEYS = {"metric_loss": "triplet", "metric_weight": 0.5, "absolute_weight": 2.0, "absolute_squared": True,
                 "relative_weight": 0.3, "relative_reduction": "mean_abs", "rkd_distance_weight": 1.0,
                 "rkd_angle_weight": 2.0, "kl_weight": 10.0, "kl_temperature": 0.2, "hint_weight": 1.0,
                 "attention_weight": 100.0, "feature_layers": "blocks.3=-2,-1=-1"}


class SimilarityMatchLoss(nn.Module):
    """A loss only this test module knows: mean |S_student - S_teacher|^power over in-batch distances."""

    built: list["SimilarityMatchLoss"] = []

    def __init__(self, power: float = 2.0):
        super().__init__()
        self.power = power
        self.calls = 0
        SimilarityMatchLoss.built.append(self)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        difference = pairwise_distances(nn.functional.normalize(student, dim=1)) - pairwise_distances(teacher)
        return difference.abs().pow(self.power).mean()


@pytest.fixture
def similarity_match():
    """Register the test's loss the way a loss module does (the decorator), and remove it afterwards."""
    SimilarityMatchLoss.built.clear()
    register_loss("similarity_match", inputs="embeddings", help="test-only distance matching",
                  options=[Option("power", float, 2.0, "exponent of the distance difference", minimum=1.0)]
                  )(SimilarityMatchLoss)
    yield get_loss("similarity_match")
    unregister_loss("similarity_match")


def test_a_loss_registered_outside_the_package_gets_flags_help_and_trains(similarity_match, folder_dataset,
                                                                         tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        distill_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--similarity-match-weight" in help_text and "--similarity-match-power" in help_text
    assert "test-only distance matching" in help_text and "similarity_match_weight*similarity_match" in help_text

    out = tmp_path / "run"
    argv = ["--data", str(folder_dataset), "--out", str(out), "--student-size", "32", "--embed-dim", "16",
            "--teacher-size", "32", "--views", "1", "--epochs", "1", "--steps-per-epoch", "2", "--batch-classes", "4",
            "--images-per-class", "3", "--absolute-weight", "0", "--similarity-match-weight", "2",
            "--similarity-match-power", "1.5", "--threads", "1", "--no-progress", "--preload", "64"]
    assert distill_main(argv) == 0
    [loss] = SimilarityMatchLoss.built
    assert loss.power == 1.5 and loss.calls == 2  # built with its option, called on both steps
    record = json.loads((out / "history.json").read_text())[0]
    assert record["loss_similarity_match"] > 0 and "loss_absolute" not in record
    assert record["loss"] == pytest.approx(record["loss_metric"] + 2 * record["loss_similarity_match"], rel=1e-5)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["similarity_match_weight"], saved["similarity_match_power"]) == (2.0, 1.5)

    config = Config(data="x", similarity_match_weight=1.0, similarity_match_power=0.5)  # the Python API too
    with pytest.raises(MobileKDError, match="--similarity-match-power must be >= 1"):
        config.validate()


def test_unregistering_removes_the_keys(similarity_match):
    assert "similarity_match_weight" in Config().to_dict()
    unregister_loss("similarity_match")
    assert "similarity_match_weight" not in Config().to_dict()
    with pytest.raises(TypeError):
        Config(similarity_match_weight=1.0)
    register_loss("similarity_match", inputs="embeddings")(SimilarityMatchLoss)  # for the fixture's teardown


def test_builtin_losses_are_registered_with_their_inputs():
    """None of the package's own losses is lost or changes what it consumes; a new loss needs no edit here."""
    inputs = {spec.name: spec.inputs for spec in loss_specs()}
    assert all(kind in ("embeddings", "maps", "labels") for kind in inputs.values())
    builtin = {"metric": "labels", "absolute": "embeddings", "relative": "embeddings", "rkd_distance": "embeddings",
               "rkd_angle": "embeddings", "kl": "embeddings", "hint": "maps", "attention": "maps"}
    assert {name: inputs.get(name) for name in builtin} == builtin
    assert [spec.name for spec in Config(data="x", absolute_weight=1.0).active_losses()] == ["metric", "absolute"]


def test_old_loss_keys_and_flags_are_unchanged(tmp_path):
    defaults = Config().to_dict()
    assert set(OLD_LOSS_KEYS) <= set(defaults)
    assert (defaults["metric_loss"], defaults["metric_weight"], defaults["kl_temperature"]) == ("normalized_softmax",
                                                                                                  1.0, 0.1)
    old = tmp_path / "old.yaml"
    old.write_text("".join(f"{key.replace('_', '-') if i % 2 else key}: {value}\n"
                           for i, (key, value) in enumerate(OLD_LOSS_KEYS.items())))
    config = Config.from_args(["--config", str(old), "--data", "x"])
    assert {key: getattr(config, key) for key in OLD_LOSS_KEYS} == OLD_LOSS_KEYS
    flags = [arg for key, value in OLD_LOSS_KEYS.items() if key != "absolute_squared"
             for arg in ("--" + key.replace("_", "-"), str(value))] + ["--absolute-squared"]
    assert {key: getattr(Config.from_args(flags + ["--data", "x"]), key) for key in OLD_LOSS_KEYS} == OLD_LOSS_KEYS


def test_a_clashing_registration_is_refused_and_changes_nothing():
    before = Config().to_dict()
    with pytest.raises(ValueError, match="already registered"):
        register_loss("kl", inputs="embeddings")(SimilarityMatchLoss)
    with pytest.raises(ValueError, match="configuration key 'teacher_budget' already exists"):
        register_loss("teacher", inputs="embeddings", options=[Option("budget", int, 0)])(SimilarityMatchLoss)
    with pytest.raises(ValueError, match="inputs must be one of"):
        register_loss("other", inputs="pixels")
    assert "teacher" not in {spec.name for spec in loss_specs()} and Config().to_dict() == before


@pytest.mark.parametrize("values, message", [
    ({"metric_loss": "none"}, "nothing to train: every loss weight is 0 (or switched off: --metric-loss none)"),
    ({"metric_weight": 0.0}, "nothing to train"),
    ({"metric_loss": "arcface"}, "--metric-loss must be one of triplet, multi_similarity"),
    ({"relative_reduction": "sum", "relative_weight": 1.0}, "--relative-reduction must be one of frobenius"),
    ({"kl_weight": -1.0}, "--kl-weight must be >= 0"),
    ({"kl_temperature": 0.0}, "--kl-temperature must be > 0"),
])
def test_registry_drives_validation(values, message):
    with pytest.raises(MobileKDError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(data="x", teacher=None, **values).validate()

"""The command lines say what they train and measure (issue: the CLI's hidden absolute loss, evaluation without
training, the teacher's test pass cached, benchmark defaults, one precision vocabulary, honest latency floors,
quiet exports)."""

from __future__ import annotations

import json

import pytest
import yaml

import mobilekd.engine
from mobilekd.config import PACKAGED_CONFIGS, Config
from mobilekd.distill import main as distill_main
from mobilekd.losses import loss_specs
from test_distill import tiny_config


def _configs_trained_by_distill(monkeypatch, argv) -> Config:
    """The Config ``python -m mobilekd.distill ARGV`` would train (the engine's ``train`` replaced)."""
    seen = []
    monkeypatch.setattr(mobilekd.engine, "train", lambda config: seen.append(config) or {"test": {"R@1": 1.0}})
    assert distill_main(argv) == 0
    return seen[0]


def test_distill_cli_yaml_and_api_share_the_absolute_loss_default(monkeypatch, tmp_path):
    config = _configs_trained_by_distill(monkeypatch, ["--data", "D", "--out", str(tmp_path / "r")])
    assert config.absolute_weight == Config().absolute_weight == 0.0
    assert Config.from_dict({"data": "D"}).absolute_weight == 0.0


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
def test_every_shipped_recipe_states_every_loss_weight(name, monkeypatch, tmp_path):
    keys = yaml.safe_load((PACKAGED_CONFIGS / f"{name}.yaml").read_text())
    assert {spec.weight_key for spec in loss_specs()} <= set(keys)
    config = _configs_trained_by_distill(monkeypatch, ["--config", name, "--out", str(tmp_path / "r")])
    assert config.absolute_weight == 0.0
    trained = {spec.name for spec in config.active_losses()}
    assert trained == ({"kl"} if name == "cub" else {"kl", "metric"})


def test_a_run_prints_its_losses_and_weights_when_it_starts(folder_dataset, tmp_path, capsys):
    mobilekd.engine.Trainer(tiny_config(folder_dataset, tmp_path / "r", teacher="none", absolute_weight=0.0,
                                        relative_weight=0.0, metric_weight=0.5))
    assert "losses: metric x 0.5 (normalized_softmax)\n" in capsys.readouterr().out
    line = Config(data="D", metric_weight=0.1, kl_weight=1.0).losses_line()
    assert line == "losses: metric x 0.1 (normalized_softmax), kl x 1.0 (temperature 0.1)"

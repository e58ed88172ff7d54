"""mobilekd behaves like a library: importing it changes nothing around it, and the files it ships work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mobilekd
from mobilekd.config import Config
from mobilekd.demo import DEMO, DISTILL_WEIGHTS
from mobilekd.errors import MobileKDError

CONFIGS = Path(mobilekd.__file__).parent / "configs"


IMPORTS_CHANGE = """
import json, os
def changes(before):
    return sorted(set(os.environ.items()) ^ set(before.items()))
before = dict(os.environ)
import mobilekd, mobilekd.config
own = changes(before)
import timm  # third-party imports may set their own variables (torch's TORCHINDUCTOR_CACHE_DIR): not ours
before = dict(os.environ)
import mobilekd.engine, mobilekd.distill, mobilekd.train
print(json.dumps([own, changes(before), "HF_HUB_OFFLINE" in os.environ]))
"""


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_import_leaves_the_environment_unchanged():
    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run([sys.executable, "-c", IMPORTS_CHANGE], env=environment, capture_output=True, text=True,
                            timeout=300, cwd=Path(mobilekd.__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[[], [], false]"


def test_package_data_globs_match_shipped_recipes():
    recipes = sorted(path.name for path in CONFIGS.glob("*.yaml"))
    assert recipes == ["cub.yaml", "demo.yaml"]
    assert '"configs/*.yaml"' in (Path(mobilekd.__file__).parent.parent / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", ["cub.yaml", "demo.yaml"])
def test_shipped_recipes_load_into_a_valid_config(name, capsys):
    from mobilekd.distill import description

    path = CONFIGS / name
    keys = yaml.safe_load(path.read_text())
    config = Config.from_args(["--config", str(path), "--data", "elsewhere"], "python -m mobilekd.distill",
                              description(), overrides={"absolute_weight": 1.0})
    assert config.data == "elsewhere" and config.uses_teacher
    assert {key: getattr(config, key) for key in keys if key != "data"} == {k: v for k, v in keys.items() if k != "data"}


def test_the_demo_reads_its_recipe_from_the_shipped_yaml(tmp_path):
    from mobilekd.demo import BUNDLED_DATA, load_recipe

    keys = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert DEMO["data"] == BUNDLED_DATA and Path(DEMO["data"]).is_file()
    assert {**DEMO, **DISTILL_WEIGHTS} == {k: v for k, v in keys.items() if k != "out"} | {"data": BUNDLED_DATA}
    assert DISTILL_WEIGHTS == {"metric_weight": 0.1, "kl_weight": 1.0, "kl_temperature": 0.1}
    # an edited recipe is what the demo runs: nothing of it is written twice
    edited = tmp_path / "demo.yaml"
    edited.write_text((CONFIGS / "demo.yaml").read_text().replace("lr: 0.0005", "lr: 1e-3").replace(
        "kl_temperature: 0.1", "kl_temperature: 0.2"))
    run, losses = load_recipe(edited)
    assert run == {**DEMO, "lr": 0.001} and losses == {**DISTILL_WEIGHTS, "kl_temperature": 0.2}


def test_config_by_recipe_name_and_unknown_name():
    assert Config.from_file("demo") == Config.from_file(CONFIGS / "demo.yaml")
    with pytest.raises(MobileKDError, match=r"config file not found: nope \(shipped recipes: .*demo"):
        Config.from_file("nope")

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


ROOT = Path(mobilekd.__file__).parent.parent
PACKAGES = ("mobilekd", "export", "benchmarks", "ship")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_shipped_files_are_all_in_the_package_data():
    """Every non-Python file under mobilekd/ (recipes, weights, licences, the demo data) is matched by a
    package-data glob, so a wheel ships it; and the recipes are the two the README names."""
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == ["cub.yaml", "demo.yaml"]
    package = Path(mobilekd.__file__).parent
    shipped = {path.relative_to(package) for path in package.rglob("*")
               if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts}
    assert shipped, "no data files found"
    globs = pyproject()["tool"]["setuptools"]["package-data"]["mobilekd"]
    unmatched = sorted(str(path) for path in shipped if not any(path.match(glob) for glob in globs))
    assert not unmatched, f"not in [tool.setuptools.package-data]: {unmatched}"


def test_console_scripts_resolve_to_the_cli_mains():
    """``mobilekd-distill`` / ``mobilekd-train`` / ``mobilekd`` point at importable callables that parse a
    command line (``mobilekd distill ARGS`` is ``mobilekd-distill ARGS``)."""
    import importlib

    scripts = pyproject()["project"]["scripts"]
    assert set(scripts) == {"mobilekd-distill", "mobilekd-train", "mobilekd"}
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        main = getattr(importlib.import_module(module), attribute)
        assert callable(main), target
        with pytest.raises(SystemExit) as exit_:
            main(["--help"])
        assert exit_.value.code == 0, name
        prefix = ["distill"] if name == "mobilekd" else []
        assert main([*prefix, "--epochs", "0", "--data", "x"]) == 2, name  # bad input: exit 2, not a traceback


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, deferred) of every absolute import in ``path``; deferred: inside a function (run only
    when that feature is used) or a try whose handlers catch ImportError (the code works without it)."""
    import ast

    found = []

    def visit(node, optional):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            optional = True
        if isinstance(node, ast.Try):
            caught = {getattr(h.type, "id", None) for h in node.handlers} | {
                getattr(e, "id", None) for h in node.handlers if isinstance(h.type, ast.Tuple) for e in h.type.elts}
            body_optional = optional or bool(caught & {"ImportError", "ModuleNotFoundError", "Exception"})
            for child in node.body:
                visit(child, body_optional)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text()), False)
    return found


def _installed_by(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` install, with their own requirements (and the
    extras they ask for), as the installed metadata declares them."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return {name for name, _ in seen}


def test_install_metadata_covers_every_third_party_import():
    """A clean install must bring what the code imports: every module-level third-party import of mobilekd/
    comes with the core dependencies (so ``import mobilekd.X`` works after ``pip install mobilekd``); every
    other import -- deferred into a function or guarded by an ImportError handler, or in export/ and
    benchmarks/ -- comes with the core dependencies plus the extras."""
    import importlib.util
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    project = pyproject()["project"]
    extras = [r for name, reqs in project["optional-dependencies"].items() if name != "all" for r in reqs]
    core, everything = _installed_by(project["dependencies"]), _installed_by(project["dependencies"] + extras)
    assert {"torch", "timm", "faiss-cpu", "pyyaml"} <= core and {"onnx", "litert-torch", "mediapipe"} <= everything
    owners = packages_distributions()
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, optional in _imports(path):
                if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
                    continue
                assert importlib.util.find_spec(module) is not None, f"{path}: {module} is not installed"
                dists = {canonicalize_name(d) for d in owners.get(module, [])}
                allowed = core if package == "mobilekd" and not optional else everything
                if not dists & allowed:
                    missing.append(f"{path.relative_to(ROOT)}: import {module} ({', '.join(sorted(dists))})")
    assert not missing, "imported but not installed by pyproject.toml's dependencies:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", ["cub.yaml", "demo.yaml"])
def test_shipped_recipes_load_into_a_valid_config(name, capsys):
    from mobilekd.distill import description

    path = CONFIGS / name
    keys = yaml.safe_load(path.read_text())
    config = Config.from_args(["--config", str(path), "--data", "elsewhere"], "python -m mobilekd.distill",
                              description())
    assert config.data == "elsewhere" and config.uses_teacher
    assert {key: getattr(config, key) for key in keys if key != "data"} == {k: v for k, v in keys.items() if k != "data"}


def test_the_demo_reads_its_recipe_from_the_shipped_yaml(tmp_path):
    from mobilekd.demo import BUNDLED_DATA, load_recipe

    keys = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert DEMO["data"] == BUNDLED_DATA and Path(DEMO["data"]).is_file()
    assert {**DEMO, **DISTILL_WEIGHTS} == {k: v for k, v in keys.items() if k != "out"} | {"data": BUNDLED_DATA}
    assert {k: v for k, v in DISTILL_WEIGHTS.items() if v} == {"metric_weight": 0.1, "kl_weight": 1.0,
                                                                 "kl_temperature": 0.1}
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

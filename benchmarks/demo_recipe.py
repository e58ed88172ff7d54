"""How ``make demo``'s recipe was chosen: one measured arm per invocation, recorded with its command and time.

    python -m benchmarks.demo_recipe NAME [distill flags ...]        # trains one arm
    python -m benchmarks.demo_recipe NAME --zero-shot [flags ...]    # evaluates the untrained student only

An arm is the demo's recipe (``mobilekd.demo.DEMO``: bundled Omniglot, the shipped ImageNet MobileNetV1-0.25,
EfficientNet-Lite0 teacher at 128 px, 4 cached views, seed 0) with the flags of ``python -m mobilekd.distill``
on top, e.g. ``kl64 --student-size 64 --metric-loss none --kl-weight 1``. Arms with a teacher loss share one
teacher cache (``OUT/teacher_cache``, built by ``python -m mobilekd.embed`` on first use; its build time is
recorded on its own). Every arm's row -- command, the settings that differ between arms, R@1/2/4/8, MAP@R and
wall time (training and evaluations, without the shared cache) -- accumulates in
``benchmarks/results/demo_recipe/demo_recipe.json`` (with the machine) and ``.md``; re-running a NAME replaces its row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import command_line, write_result
from mobilekd.config import Config
from mobilekd.errors import cli_entry

SETTINGS = ("student_size", "embed_dim", "lr", "epochs", "metric_loss", "metric_weight", "kl_weight",
            "kl_temperature", "absolute_weight", "crop_scale", "threads")


def teacher_cache(config: Config, directory: Path) -> float:
    """Build the shared teacher cache for ``config`` once (``python -m mobilekd.embed``); seconds spent."""
    manifest = directory / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        return 0.0  # a run that finds the cache stale for its settings stops with TeacherCache's own error
    from mobilekd.embed import main as embed

    started = time.time()
    embed(["--data", config.data, "--teacher", config.teacher, "--teacher-size", str(config.teacher_size),
           "--views", str(config.views), "--crop-scale", str(config.crop_scale), "--seed", str(config.seed),
           "--threads", str(config.threads), "--teacher-cache", str(directory), "--no-progress"])
    return time.time() - started


def markdown(results: dict) -> str:
    lines = ["# `make demo` recipe: measured arms (Omniglot small1, 68 unseen test characters)", "",
             "Written by `python -m benchmarks.demo_recipe` (see its docstring). One seed (0) per arm. Seconds: "
             "the arm's training and evaluations, without the shared teacher cache. Machine: "
             f"{results['machine'].get('cpu_model')} x{results['machine'].get('usable_cores')}, "
             f"load average {results['machine'].get('load_average')} at the last write.", ""]
    if results.get("cache"):
        cache = results["cache"]
        lines += [f"Teacher cache ({cache['teacher']} at {cache['teacher_size']} px, {cache['views']} views per "
                  f"training image): built in {cache['seconds']:.0f} s at {cache['threads']} thread(s).", ""]
    lines += ["| arm | " + " | ".join(SETTINGS) + " | R@1 | R@2 | R@4 | R@8 | MAP@R | seconds | R@1 / MAP@R by epoch |",
              "|---" * (len(SETTINGS) + 8) + "|"]
    for name, row in results["rows"].items():
        settings = " | ".join(str(row["settings"].get(key, "")) for key in SETTINGS)
        metrics = " | ".join(f"{row['test'][k]:.2f}" for k in ("R@1", "R@2", "R@4", "R@8", "MAP@R"))
        curve = ", ".join(f"{h['epoch']}: {h['test']['R@1']:.1f} / {h['test']['MAP@R']:.1f}"
                          for h in row.get("history") or [] if "test" in h)
        lines.append(f"| {name} | {settings} | {metrics} | {row['seconds']:.0f} | {curve} |")
    if results.get("teacher"):
        teacher = results["teacher"]
        lines += ["", f"Teacher ({teacher['name']} ImageNet, {teacher['size']} px, no training): R@1 "
                      f"{teacher['test']['R@1']:.2f}, MAP@R {teacher['test']['MAP@R']:.2f}."]
    if results.get("notes"):  # written by hand into the JSON: what the rows alone do not say
        lines += ["", *results["notes"]]
    lines += ["", "Commands:", "", "```bash"] + [row["command"] for row in results["rows"].values()] + ["```", ""]
    return "\n".join(lines)


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the arm's name (its row and its run folder OUT/NAME)")
    parser.add_argument("--zero-shot", action="store_true", help="evaluate the untrained student; train nothing")
    parser.add_argument("--runs", default="runs/demo_recipe", help="folder of the arms' runs and the teacher cache")
    parser.add_argument("--results", default="benchmarks/results/demo_recipe/demo_recipe")
    args, flags = parser.parse_known_args(argv)
    from benchmarks.machine import describe
    from mobilekd.demo import DEMO
    from mobilekd.distill import description
    from mobilekd.engine import evaluate_untrained, train

    config = Config.from_args([*flags, "--out", str(Path(args.runs) / args.name)], "python -m benchmarks.demo_recipe",
                              description(), overrides={**DEMO, "resume": False, "overwrite": True})
    results_path = Path(args.results + ".json")
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": {}}
    if config.uses_teacher and not config.teacher_cache:
        cache = Path(args.runs) / "teacher_cache"
        seconds = teacher_cache(config, cache)
        if seconds:
            results["cache"] = {"seconds": round(seconds, 1), "teacher": config.teacher,
                                "teacher_size": config.teacher_size, "views": config.views, "threads": config.threads}
        config.teacher_cache = str(cache)
    started = time.time()
    summary = {"test": evaluate_untrained(config)} if args.zero_shot else train(config)
    seconds = time.time() - started
    command = command_line("benchmarks.demo_recipe", argv)
    settings = {key: getattr(config, key) for key in SETTINGS}
    if args.zero_shot:
        settings = {"student_size": config.student_size, "embed_dim": 0, "threads": config.threads}
    results["rows"][args.name] = {"command": command, "settings": settings, "test": summary["test"],
                                  "seconds": round(seconds, 1), "history": summary.get("out") and json.loads(
                                      (Path(summary["out"]) / "history.json").read_text())}
    if summary.get("teacher"):
        results["teacher"] = {"name": config.teacher, "size": config.teacher_size, "test": summary["teacher"]}
    results["machine"] = describe()
    write_result(results_path, results)
    Path(args.results + ".md").write_text(markdown(results))
    print(f"{args.name}: R@1 {summary['test']['R@1']:.2f} MAP@R {summary['test']['MAP@R']:.2f} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

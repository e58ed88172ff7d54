"""Does distillation carry to other data sets? One table from ``benchmarks.distill_cub`` result files.

    python -m benchmarks.transfer RESULT.json [RESULT.json ...] --out benchmarks/results/transfer
    python -m benchmarks.transfer RESULT.json ... --out benchmarks/results/recipe128 --levers --dataset cub100

Each RESULT is a ``benchmarks.distill_cub`` JSON (one data set, one student size, one or more seeds), or
``FILE:ARMS`` for only those arms of it (a file of several studies). Its rows
become one row per (data set, size, arm, seed) -- ``zero_shot``, ``alone``, ``teacher`` and ``recipe`` (the
shipped ``kl_label_free`` recipe), a ``--set`` variant named after what it changes (``recipe+test_photos``: the
unlabeled photos of the test classes, ``recipe+other_photos_of_test_classes``: half of them, the other half
searched, ``recipe+imagenet_unlabeled``: the 26k unlabeled ImageNet photos, ``recipe+after_224px``: continued
from a 224 px run), with ``+epochs=12`` / ``+teacher_260px`` when the file's own flags differ from the shipped
recipe's.

Writes ``OUT/summary.json`` (``rows``: dataset, student_size, arm, seed, R@1, MAP@R, and with ``--levers``
cpu_minutes: the arm's training run plus the teacher caches built for it; ``sources``: each file with its command,
git commit and machine) and ``OUT/table.md``: per data set and arm the mean +- sd over seeds, and the share of
the zero-shot -> teacher R@1 gap each arm closes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from benchmarks import markdown_table, write_result
from mobilekd.config import read_config_file
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import atomic_path

DATASET_NAMES = {"cub100-227": "cub100"}
RECIPE_ARM = "kl_label_free"


def unlabeled_name(path: str) -> str:
    name = Path(path.rstrip("/")).name
    if name.endswith("test_unlabeled"):
        return "test_photos"
    if name.endswith("testA_unlabeled"):  # half of each test class's photos; the other half is searched
        return "other_photos_of_test_classes"
    return "imagenet_unlabeled" if name.startswith("imagenet-unlabeled") else name


def student_name(path: str) -> str:
    """A run that starts from a trained checkpoint: ``after_224px`` for a distill_cub run folder of that size."""
    size = re.search(r"/(\d+)px/", path)
    return f"after_{size[1]}px" if size else "from_checkpoint"


def arm_name(suffix: str) -> str:
    """``kl_label_free+unlabeled=/x/caltech101_test_unlabeled`` -> ``recipe+test_photos``; ``+lr=0.001`` (the
    recipe's own lr, given with --set in older runs) is dropped, and so is ``pretrained=False`` beside a
    ``student=`` checkpoint (``recipe+after_224px``: continued from the 224 px run of that folder)."""
    arm, *changes = re.split(r"\+(?=[a-z_]+=)", suffix)  # a checkpoint path may itself hold "+"
    parts = ["recipe" if arm == RECIPE_ARM else arm]
    from_checkpoint = any(change.startswith("student=") for change in changes)
    for change in changes:
        key, _, value = change.partition("=")
        if key == "unlabeled":
            parts.append(unlabeled_name(value))
        elif key == "student":
            parts.append(student_name(value))
        elif change != "lr=0.001" and not (from_checkpoint and change == "pretrained=False"):
            parts.append(change)
    return "+".join(parts)


def recipe_changes(args: dict) -> tuple[str, str]:
    """What a distill_cub file's own flags change in the shipped recipe, as (student arm suffix, teacher arm):
    ``+epochs=12`` for a longer schedule, ``+teacher_260px`` / ``teacher_260px`` for the teacher at another size."""
    shipped = read_config_file("cub")
    epochs = args.get("epochs")
    size = args.get("teacher_size")
    teacher = f"teacher_{size}px" if size and size != shipped["teacher_size"] else ""
    longer = f"epochs={epochs}" if epochs and epochs != shipped["epochs"] else ""
    return "+".join(filter(None, [longer, teacher])), teacher or "teacher"


def parse_spec(spec: str) -> tuple[Path, list[str]]:
    """``FILE`` or ``FILE:ARM,ARM`` (only those arms of the file)."""
    path, _, arms = spec.partition(":")
    return Path(path), [a for a in arms.split(",") if a]


def rows_of(spec: str, dataset: str | None = None) -> list[dict]:
    """One row per (arm, seed) of a distill_cub result file (``FILE:ARMS`` keeps only ARMS), or of a list of
    ``mobilekd.distill`` runs (``{"rows": [{"seed", "test", "teacher"}, ...]}``, ``FILE:ARM`` names their arm)."""
    path, arms = parse_spec(spec)
    try:
        result = json.loads(path.read_text())
        if isinstance(result.get("rows"), list):
            return run_list_rows(path, result, arms, dataset)
        args, rows = result["args"], result["rows"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MobileKDError(f"{path}: not a benchmarks.distill_cub result ({error})") from None
    return [row for row in distill_cub_rows(path, result, args, rows) if not arms or row["arm"] in arms]


def run_list_rows(path: Path, result: dict, arms: list[str], dataset: str | None) -> list[dict]:
    """The runs' data set is the file's ``data.path`` (else ``--dataset``); FILE:ARM names their arm; a run's
    ``cpu_minutes``, when given, is its cost."""
    data = (result.get("data") or {}).get("path") if isinstance(result.get("data"), dict) else None
    dataset = DATASET_NAMES.get(Path(data).name, Path(data).name) if data else dataset
    if len(arms) != 1 or not dataset:
        raise MobileKDError(f"{path}: a list of runs needs its arm (FILE:ARM) and a data set (data.path or "
                            "--dataset)")
    size = result.get("student_size", 128)
    rows = [{"dataset": dataset, "student_size": size, "arm": arms[0], "seed": int(run["seed"]),
             "R@1": round(run["test"]["R@1"], 2), "MAP@R": round(run["test"]["MAP@R"], 2), "source": path.name}
            for run in result["rows"]]
    for row, run in zip(rows, result["rows"]):
        if run.get("cpu_minutes") is not None:  # what the run cost, when its list recorded it
            row["cpu_minutes"] = round(run["cpu_minutes"], 1)
    return rows


def distill_cub_rows(path: Path, result: dict, args: dict, rows: dict) -> list[dict]:
    dataset = args.get("title") or Path(args["data"].rstrip("/")).name
    dataset = DATASET_NAMES.get(dataset, dataset)
    seeds = [int(s) for s in str(args["seeds"]).split(",")]
    out = []
    changes, teacher = recipe_changes(args)
    for name, metrics in rows.items():
        arm = teacher if name.startswith("teacher ") else "+".join(filter(None, [arm_name(name.split("px) ", 1)[1]),
                                                                                   changes]))
        per_seed = result.get("seeds", {}).get(name) or {str(seeds[0]): metrics}
        for seed, m in per_seed.items():
            row = {"dataset": dataset, "student_size": args["student_size"], "arm": arm, "seed": int(seed),
                   "R@1": round(m["R@1"], 2), "MAP@R": round(m["MAP@R"], 2), "source": path.name}
            cost = result.get("costs", {}).get(name, {}).get(seed)
            if cost and cost.get("wall_minutes") != 0.0:  # 0.0: reused from an earlier run by an older distill_cub
                # the seed's teacher caches count for the arms that use a teacher
                cache = result.get("cache_costs", {}).get(seed, {}) if arm not in ("zero_shot", "alone") else {}
                row["cpu_minutes"] = round(cost["cpu_minutes"] + cache.get("cpu_minutes", 0.0), 1)
            out.append(row)
    return out


def merge(rows: list[dict]) -> list[dict]:
    """Later files win for the same (dataset, size, arm, seed); the teacher is deterministic: one row."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        seed = 0 if row["arm"] == "teacher" else row["seed"]
        merged[(row["dataset"], row["student_size"], row["arm"], seed)] = {**row, "seed": seed}
    return list(merged.values())


def mean_sd(values: list[float]) -> str:
    sd = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{sd}"


def table(rows: list[dict]) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for size in sorted({r["student_size"] for r in rows if r["dataset"] == dataset}):
            group = [r for r in rows if r["dataset"] == dataset and r["student_size"] == size]
            arms = list(dict.fromkeys(r["arm"] for r in group))
            r1 = {a: [r["R@1"] for r in group if r["arm"] == a] for a in arms}
            low, high = (statistics.fmean(r1[a]) if a in r1 else None for a in ("zero_shot", "teacher"))
            body = []
            for arm in arms:
                share = (f"{100 * (statistics.fmean(r1[arm]) - low) / (high - low):.0f} %"
                         if low is not None and high is not None and high > low and arm not in ("teacher",) else "")
                maps = [r["MAP@R"] for r in group if r["arm"] == arm]
                costs = [r["cpu_minutes"] for r in group if r["arm"] == arm and r.get("cpu_minutes") is not None]
                cost = f"{min(costs):.1f}-{max(costs):.1f}" if len(costs) > 1 else (f"{costs[0]:.1f}" if costs else "")
                body.append([arm, len(r1[arm]), mean_sd(r1[arm]), mean_sd(maps), share, cost])
            lines += [f"### {dataset}, {size} px", "",
                      *markdown_table(["arm", "seeds", "R@1", "MAP@R", "zero-shot -> teacher gap closed",
                                       "CPU minutes"], body), ""]
    return "\n".join(lines)


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="FILE[:ARMS]",
                        help="benchmarks.distill_cub result JSON files (:ARMS keeps only those arms)")
    parser.add_argument("--out", required=True, help="folder for summary.json and table.md")
    parser.add_argument("--levers", action="store_true", help="the lever-table schema: no dataset, cpu_minutes")
    parser.add_argument("--dataset", help="keep only this data set's rows")
    parser.add_argument("--question", default="Does the shipped recipe carry to data sets other than CUB-100?")
    args = parser.parse_args(argv)
    rows = merge([row for spec in args.results for row in rows_of(spec, args.dataset)])
    if args.dataset:
        rows = [r for r in rows if r["dataset"] == args.dataset]
    if not rows:
        raise MobileKDError("no rows: check the result files and --dataset")
    sources = []
    for spec in args.results:
        path = parse_spec(spec)[0]
        result = json.loads(path.read_text())
        sources.append({"file": str(path), "command": result.get("command"),
                        "git_commit": result.get("git_commit") or result.get("git_commits"),
                        "machine": result.get("machine")})
    shown = table(rows)  # with the teacher, for the share of the gap each arm closes
    if args.levers:
        rows = [{"cpu_minutes": None, **{k: v for k, v in r.items() if k != "dataset"}}  # None: not recorded
                for r in rows if r["arm"] != "teacher"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machines = list({json.dumps(s["machine"], sort_keys=True): s["machine"] for s in sources}.values())
    machine = machines[0] if len(machines) == 1 else {"several": machines}  # where the numbers were measured
    write_result(out / "summary.json", {"question": args.question, "rows": rows, "sources": sources,
                                        "machine": machine})
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(shown + "\n")
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

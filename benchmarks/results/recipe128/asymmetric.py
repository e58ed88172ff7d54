import sys; sys.path.insert(0, ".")
"""128 px queries against the gallery the same student embedded at 224 px (issue 21 item 2), per checkpoint:
benchmarks.recall --size 128 --gallery-size 224, then a run list for benchmarks.transfer (FILE:ARM).
cpu_minutes = the student's training (its distill_cub row and teacher cache) + this evaluation.
usage: asym.py OUT.json RESULT.json ROW_SUFFIX SEED=CKPT [SEED=CKPT ...]"""
import json, os, subprocess, sys
from pathlib import Path

out, result_file, row_suffix, *runs = sys.argv[1:]
result = json.loads(Path(result_file).read_text())
name = next(n for n in result["costs"] if n.endswith(row_suffix))
rows = []
for item in runs:
    seed, ckpt = item.split("=", 1)
    before = sum(os.times()[2:4])
    recall = Path(out).with_name(f"recall_s{seed}.json")
    subprocess.run([".venv/bin/python", "-m", "benchmarks.recall", ckpt, "--data", "../shared/data/cub100-227",
                    "--size", "128", "--gallery-model", ckpt, "--gallery-size", "224", "--threads", "2",
                    "--out", str(recall), "--quiet"], check=True)
    spent = (sum(os.times()[2:4]) - before) / 60
    train = result["costs"][name][seed]["cpu_minutes"] + result["cache_costs"][seed]["cpu_minutes"]
    row = json.loads(recall.read_text())["results"][0]
    rows.append({"seed": int(seed), "test": row["asymmetric"], "symmetric_128": row["symmetric"],
                 "checkpoint": ckpt, "cpu_minutes": round(train + spent, 2), "eval_cpu_minutes": round(spent, 2)})
    print(seed, row["symmetric"]["R@1"], "->", row["asymmetric"]["R@1"], f"({spent:.2f} CPU min)")
from benchmarks.machine import describe
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
Path(out).write_text(json.dumps({"machine": describe(), "git_commit": commit, "question": "128 px queries vs the gallery the same student embedded at 224 px",
                                 "command": " ".join(sys.argv), "data": {"path": "../shared/data/cub100-227"},
                                 "student_size": 128, "base_row": name, "rows": rows}, indent=1))

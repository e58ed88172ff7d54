"""Run lists (benchmarks.transfer FILE:ARM) for the students distilled at 224 px first and then at 128 px, with
the 224 px stage charged to them, and for 128 px queries against a 224 px gallery (asymmetric.py's lists).

    python benchmarks/results/recipe128/after_224px.py RUNS OUT

RUNS: the distill_cub run root of study s28 (/work/runs/cub224p: s012_test_photos.json = the 224 px stage,
sN_128_after224.json = the 128 px stage of seed N, both on one teacher cache per seed); OUT: this folder's runs/.
cpu_minutes = 224 px stage + 128 px stage + the seed's teacher cache (built once, shared by both stages)
(+ the asymmetric evaluation for those lists).
"""
import json
import sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
stage1 = json.loads((runs / "s012_test_photos.json").read_text())
rows, commands = [], [stage1["command"]]
for seed in ("0", "1", "2"):
    stage2 = json.loads((runs / f"s{seed}_128_after224.json").read_text())
    commands.append(stage2["command"])
    name = next(n for n in stage2["rows"] if not n.startswith("teacher "))
    cost = (next(iter(stage1["costs"].values()))[seed]["cpu_minutes"] + stage2["costs"][name][seed]["cpu_minutes"]
            + stage1["cache_costs"][seed]["cpu_minutes"])
    rows.append({"seed": int(seed), "test": stage2["rows"][name], "teacher": stage2["rows"].get(
        next((n for n in stage2["rows"] if n.startswith("teacher ")), ""), None), "cpu_minutes": round(cost, 2)})
meta = {"machine": stage1["machine"], "git_commit": [stage1.get("git_commit"), stage2.get("git_commit")],
        "data": {"path": "../shared/data/cub100-227"}, "student_size": 128}
(out / "after_224px.json").write_text(json.dumps({
    **meta, "question": "the 128 px student continued from the same recipe's 224 px student (12 epochs, photos)",
    "command": commands, "rows": rows}, indent=1) + "\n")

# asymmetric.py's lists (ASYM/{c,b,a}): the 128 px recipe's students, the after_224px students, the 224 px
# students -- each row charged its student's cost (as above for b) plus the evaluation
if len(sys.argv) > 3:
    asym = Path(sys.argv[3])
    after = {r["seed"]: r["cpu_minutes"] for r in rows}
    for part, name in (("c", "recipe+test_photos"), ("b", "recipe+after_224px+test_photos"), ("a", "224px")):
        files = sorted((asym / part).glob("runs*.json"))
        lists = [json.loads(f.read_text()) for f in files]
        joined = [row for one in lists for row in one["rows"]]
        for row in joined:
            if part == "b":
                row["cpu_minutes"] = round(after[row["seed"]] + row["eval_cpu_minutes"], 2)
        (out / f"asymmetric_{part}.json").write_text(json.dumps({
            **meta, "question": f"{name} students: 128 px queries against the gallery they embedded at 224 px",
            "command": [one["command"] for one in lists], "git_commit": lists[0]["git_commit"],
            "rows": joined}, indent=1) + "\n")

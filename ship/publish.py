"""The last stage: assemble the bundle from the work (files, report, android/, MODEL_CARD.md, manifest.json) in
``OUT.work/bundle/`` and publish it onto ``OUT`` by a rename (``ship.bundle.publish``).

Bundle tree::

    OUT/
      MODEL_CARD.md  manifest.json
      <format>-<precision>/model.<ext> + model.json     (one folder per exported file)
      report/index.html + report.md (+ its pictures)
      android/                                           (copy into android_demo/app/src/main/assets/)
      results/latency.json  results/recall.json           (the measurements the report and card are made from)
"""

from __future__ import annotations

import json

from ship.bundle import MARKER, copy_into, fresh, publish
from ship.manifest import build_manifest
from ship.model_card import write_model_card
from mobilekd.io import write_json


def splits(plan) -> dict:
    from mobilekd.data import load_image_set

    found = {}
    for split in ("train", "test"):
        images = load_image_set(plan.data, split, plan.layout, plan.train_fraction)
        names = images.class_names
        found[split] = (len(images), [names[i] for i in sorted(set(images.labels.tolist()))] if names else [])
    return found


def assemble(plan, layout, stages) -> None:
    staging = fresh(layout.staging)
    exports = {}
    for fmt, precision in plan.exports:
        name = f"{fmt}-{precision}"
        copy_into(layout.export(name), staging, name)
        exports[name] = json.loads((layout.export(name) / "model.json").read_text())
    for name in ("latency.json", "recall.json"):
        copy_into(layout.results / name, staging, f"results/{name}")
    copy_into(layout.report, staging, "report")
    if layout.android.exists() and "android" in stages.done:
        copy_into(layout.android, staging, "android")
    meta = json.loads((plan.checkpoint / "model.json").read_text())
    recall = json.loads((layout.results / "recall.json").read_text())
    latency = json.loads((layout.results / "latency.json").read_text())
    write_model_card(staging / "MODEL_CARD.md", plan, meta, recall, latency, exports, splits(plan))
    write_json(staging / "manifest.json", build_manifest(plan, stages, staging, ("manifest.json", MARKER)))
    publish(layout)


def summary(layout, seconds: float) -> str:
    """What the user reads last: the quality/speed table, the bundle's main paths and the total time."""
    out = layout.out
    recall = json.loads((out / "results" / "recall.json").read_text())
    latency = json.loads((out / "results" / "latency.json").read_text())
    speed = {row["model"]: row["median_ms"] for row in latency["results"]}
    lines = ["", "| model | R@1 | MAP@R | median ms (host, 1 thread) |", "|---|---|---|---|"]
    for row in recall["results"]:
        ms = speed.get(row["model"])
        lines.append(f"| {row['model']} | {row['symmetric']['R@1']:.2f} | {row['symmetric']['MAP@R']:.2f} | "
                     f"{'-' if ms is None else f'{ms:.3f}'} |")
    lines += ["", f"shipped {out} in {seconds / 60:.1f} min:", f"  report:     {out / 'report' / 'index.html'}",
              f"  model card: {out / 'MODEL_CARD.md'}"]
    if (out / "android").is_dir():
        lines.append(f"  android:    {out / 'android'}  (cp -r {out / 'android'}/. "
                     "android_demo/app/src/main/assets/)")
    lines.append(f"  work:       {layout.work} (resumable; safe to delete)")
    return "\n".join(lines)

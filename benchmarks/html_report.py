"""One self-contained HTML page (and ``report.md``) on a distilled student: how good, how fast, what it finds.

    python -m benchmarks.html_report --recall R.json [--latency L.json] --embeddings DIR --data D [--split test]
        [--history H.json] --float LABEL [--quantized LABEL] [--teacher LABEL] --out DIR

Reads ``benchmarks.recall`` results (run with ``--save-embeddings DIR``), optional ``benchmarks.latency``
results and a run's ``history.json``; models are named by their result labels. ``DIR/index.html`` embeds
every image as a ``data:`` URI (CSS inline, no other file needed); ``DIR/report.md`` shows the same tables
with the PNGs written beside it. Sections: a summary table (R@1 and MAP@R with 95 % bootstrap intervals,
latency, size, MACs), retrieval grids (a seeded sample of test queries and their top-5 for teacher, float
student and quantized model), the queries whose top-1 changed with quantization, the float student's worst
classes, a Recall@1-vs-latency plot and the training curves. The folder is written whole or not at all.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report_figures import TOP, Thumbnails, changed_grid, retrieval_grid, training_curves, worst_grid
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_replaceable, check_writable_dir, mark_owned, replace_folder

TOOL = "benchmarks.html_report"
MARKER = ".mobilekd-report.json"
MAX_CHANGED_ROWS = 12
WORST_CLASSES = 5


# ------------------------------------------------------------------------------------------------ inputs


def result_rows(result: dict | None, kind: str) -> list[dict]:
    """The ``results`` rows of a ``kind`` result dict, or one clear error if it is not one."""
    if result is None:
        return []
    if not isinstance(result, dict) or result.get("kind") != kind or not isinstance(result.get("results"), list) \
            or not all(isinstance(row, dict) and "model" in row for row in result["results"]):
        raise MobileKDError(f"the {kind} result is not a benchmarks.{kind} result JSON (needs kind '{kind}' and "
                            "a 'results' list of objects with 'model')")
    return result["results"]


def model_row(rows: dict[str, dict], label: str, what: str) -> dict:
    if label not in rows:
        raise MobileKDError(f"{what} {label!r} is not in the recall result; its models are: "
                            f"{', '.join(rows) or 'none'}")
    return rows[label]


class Embedded:
    """One model's test embeddings in the image set's order, and its leave-one-out top-5 neighbours."""

    def __init__(self, label: str, embeddings: np.ndarray, labels: np.ndarray):
        from mobilekd.metrics import nearest_neighbors

        self.label = label
        self.neighbors = nearest_neighbors(embeddings, embeddings, TOP, leave_one_out=True)
        self.hits = labels[self.neighbors] == labels[:, None]

    @property
    def top1(self) -> np.ndarray:
        return self.neighbors[:, 0]


def load_embedded(label: str, row: dict, embeddings_dir: Path, images) -> Embedded:
    """The npz that ``benchmarks.recall --save-embeddings`` wrote for ``row``, ordered like ``images``."""
    if not row.get("embeddings"):
        raise MobileKDError(f"the recall result has no saved embeddings for {label!r}: run benchmarks.recall "
                            "with --save-embeddings DIR and pass that DIR")
    path = Path(embeddings_dir) / Path(str(row["embeddings"])).name
    try:
        with np.load(path, allow_pickle=False) as npz:
            embeddings, labels, paths = npz["embeddings"], npz["labels"], [str(p) for p in npz["paths"]]
    except FileNotFoundError:
        raise MobileKDError(f"embeddings file of {label!r} not found: {path}") from None
    except (OSError, ValueError, KeyError) as error:
        raise MobileKDError(f"{path} is not an embeddings npz of benchmarks.recall (embeddings, labels, "
                            f"paths): {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    position = {key: i for i, key in enumerate(images.keys)}
    if embeddings.ndim != 2 or len(embeddings) != len(paths) or sorted(paths) != sorted(images.keys):
        raise MobileKDError(f"{path} does not hold embeddings of the {len(images)} images of {images.name}: "
                            "was it saved for another data set or split?")
    order = np.argsort([position[p] for p in paths], kind="stable")
    if not np.array_equal(np.asarray(labels)[order], images.labels):
        raise MobileKDError(f"{path}: its labels differ from those of {images.name}")
    embeddings = np.ascontiguousarray(embeddings[order], dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise MobileKDError(f"{path} holds NaN or infinite embeddings")
    return Embedded(label, embeddings, images.labels)


# ------------------------------------------------------------------------------------------------ analysis


def sample_queries(n: int, queries: int, seed: int) -> list[int]:
    """``queries`` distinct query indices drawn with ``seed`` (sorted): the same sample on every run."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(queries, n), replace=False).tolist())


def changed_top1(float_model: Embedded, quantized: Embedded) -> np.ndarray:
    """Indices of the queries whose nearest neighbour differs between the two models."""
    return np.flatnonzero(float_model.top1 != quantized.top1)


def per_class_recall(model: Embedded, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall@1 (percent) of each class's queries."""
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=model.hits[:, 0].astype(np.float64), minlength=num_classes)
    return 100.0 * hits / np.maximum(counts, 1)


def worst_classes(recall_by_class: np.ndarray, count: int = WORST_CLASSES) -> list[int]:
    """The ``count`` classes with the lowest Recall@1 (ties: lower class index first)."""
    return np.argsort(recall_by_class, kind="stable")[:count].tolist()


def latency_of(latency: dict | None, label: str, runtime: str | None) -> tuple[dict | None, dict]:
    """(the latency row at the fewest threads measured for ``label`` -- its recall runtime if measured, else
    the fastest -- or None, the model's size/MACs entry or {})."""
    rows = [r for r in result_rows(latency, "latency") if r["model"] == label and
            (r.get("median_ms") is not None or r.get("mean_ms") is not None)]
    info = next((m for m in (latency or {}).get("models", []) if isinstance(m, dict) and m.get("label") == label), {})
    if not rows:
        return None, info
    fewest = min(r.get("threads", 1) for r in rows)
    rows = [r for r in rows if r.get("threads", 1) == fewest]
    same = [r for r in rows if r.get("runtime") == runtime]
    return min(same or rows, key=lambda r: r.get("median_ms") or r.get("mean_ms")), info


def median_ms(row: dict) -> float:
    return row["median_ms"] if row.get("median_ms") is not None else row["mean_ms"]



def _ci(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if not isinstance(value, (int, float)):
        return "-"
    interval = (metrics.get("ci95") or {}).get(name)
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"


def summary_rows(recall_rows: dict[str, dict], latency: dict | None, roles: dict[str, str]) -> list[list[str]]:
    """One row per model of the recall result: role, R@1 and MAP@R with intervals, latency, size, MACs."""
    order = [label for label in roles if label in recall_rows] + [m for m in recall_rows if m not in roles]
    rows = []
    for label in order:
        row = recall_rows[label]
        timing, info = latency_of(latency, label, row.get("runtime"))
        size, macs = info.get("file_bytes"), info.get("macs")
        rows.append([label, roles.get(label, "exported"), _ci(row["symmetric"], "R@1"), _ci(row["symmetric"], "MAP@R"),
                     f"{median_ms(timing):.3g} ({timing.get('threads', '?')} t)" if timing else "-",
                     (timing or {}).get("runtime") or row.get("runtime") or "-",
                     f"{size / 1e6:.2f}" if size else "-", f"{macs / 1e6:.1f}" if macs else "-"])
    return rows


SUMMARY_HEADER = ["model", "role", "R@1 % [95 % CI]", "MAP@R % [95 % CI]", "median ms (threads)", "runtime",
                  "file MB", "MACs (M)"]

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f2f2f2}img{max-width:100%;height:auto;display:block;margin:.5em 0}
.note{color:#555;font-size:.9em}.ok{color:#009638}.bad{color:#d71e1e}"""

SCRIPT = """window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});"""


class Page:
    """The report as HTML and Markdown at once: each call adds the same content to both."""

    def __init__(self, folder: Path):
        self.folder, self.html, self.md, self.pngs = folder, [], [], {}

    def heading(self, text: str) -> None:
        self.html.append(f"<h2>{html.escape(text)}</h2>")
        self.md += ([""] if self.md and self.md[-1] else []) + [f"## {text}", ""]

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def table(self, header: list[str], rows: list[list]) -> None:
        cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
        self.html.append("<table><tr>" + cells("th", header) + "</tr>" +
                         "".join(f"<tr>{cells('td', row)}</tr>" for row in rows) + "</table>")
        escape = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        self.md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
            ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows] + [""]

    def image(self, name: str, alt: str) -> None:
        data = base64.b64encode((self.folder / name).read_bytes()).decode("ascii")
        self.html.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">')
        self.md += [f"![{alt}]({name})", ""]
        self.pngs[Path(name).stem] = name

    def render(self, title: str) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
                f"<h1>{html.escape(title)}</h1>\n" + "\n".join(self.html) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


# ------------------------------------------------------------------------------------------------ the report


def write_html_report(out_dir, *, recall: dict, latency: dict | None, embeddings_dir, data: str,
                      split: str = "test", layout: str = "auto", history: list[dict] | None = None,
                      teacher: str | None = None, float_student: str, quantized: str | None = None,
                      title: str = "mobilekd model report", queries: int = 8, seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/report.md`` with its PNGs; the folder is built
    beside ``out_dir`` and renamed into place, so a failure leaves no half-written report. Returns
    {"html": ..., "markdown": ..., <png stem>: ...} paths. Raises MobileKDError on inconsistent input."""
    from mobilekd.data import load_image_set

    out_dir = Path(out_dir)
    if queries < 1:
        raise MobileKDError(f"queries must be >= 1, got {queries}")
    rows = {row["model"]: row for row in result_rows(recall, "recall")}
    result_rows(latency, "latency")
    roles = {label: role for label, role in ((teacher, "teacher"), (float_student, "float student"),
                                             (quantized, "quantized")) if label}
    for label, role in roles.items():
        model_row(rows, label, role)
    check_replaceable(out_dir, MARKER, TOOL)
    images = load_image_set(data, split, layout)
    models = {label: load_embedded(label, rows[label], Path(embeddings_dir), images)
              for label in roles if label == float_student or rows[label].get("embeddings")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        page = build_page(work, rows, latency, images, models, roles, history, float_student, quantized,
                          queries, seed, data, split)
        (work / "index.html").write_text(page.render(title), encoding="utf-8")
        (work / "report.md").write_text("\n".join([f"# {title}", *page.md]).rstrip() + "\n", encoding="utf-8")
        mark_owned(work, MARKER, TOOL)
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder gets the permissions mkdir would
        replace_folder(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"html": out_dir / "index.html", "markdown": out_dir / "report.md",
            **{stem: out_dir / name for stem, name in page.pngs.items()}}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_page(work: Path, rows, latency, images, models: dict[str, Embedded], roles: dict[str, str], history,
               float_student: str, quantized: str | None, queries: int, seed: int, data: str, split: str) -> Page:
    """Every section, in order, into a Page whose PNGs are written to ``work``."""
    page = Page(work)
    page.text(f"Data: {data} ({split} split, {len(images)} images, {images.num_classes} classes). "
              "Retrieval is leave-one-out: every image queries all the others.")
    add_summary(page, rows, latency, roles)
    thumbs, flt = Thumbnails(images), models[float_student]
    add_retrieval(page, thumbs, sample_queries(len(images), queries, seed), seed, models, roles)
    page.heading("Top-1 changed by quantization")
    if quantized is None or quantized not in models:
        page.text("No quantized model with saved embeddings was given." if quantized is None else
                  f"{quantized} has no saved embeddings: not compared.")
    else:
        add_changed(page, thumbs, flt, models[quantized], work)
    page.heading(f"Classes {float_student} retrieves worst")
    add_worst(page, thumbs, flt, images, work)
    add_recall_latency(page, rows, latency)
    add_training(page, history)
    return page


def add_summary(page: Page, rows: dict[str, dict], latency: dict | None, roles: dict[str, str]) -> None:
    page.heading("Summary")
    page.table(SUMMARY_HEADER, summary_rows(rows, latency, roles))
    page.text("95 % intervals: bootstrap over the queries (1000 resamples). Latency: batch 1, fewest threads "
              "measured; '-' where no latency result names the model.")


def add_retrieval(page: Page, thumbs: Thumbnails, sample: list[int], seed: int, models: dict[str, Embedded],
                  roles: dict[str, str]) -> None:
    page.heading("Retrieval examples")
    retrieval_grid(thumbs, sample, [models[label] for label in roles if label in models],
                   page.folder / "retrieval.png")
    page.image("retrieval.png", "queries and their top-5 neighbours")
    missing = [label for label in roles if label not in models]
    page.text(f"{len(sample)} test queries drawn with seed {seed} (blue frame) and their {TOP} nearest images, "
              "the query itself left out: green = same class, red = another class."
              + (f" Not shown (no saved embeddings): {', '.join(missing)}." if missing else ""))


def add_recall_latency(page: Page, rows: dict[str, dict], latency: dict | None) -> None:
    """Each model with a latency row as one point (its own marker, named in the key), R@1 interval as error bar."""
    from benchmarks.report import recall_latency_plot

    page.heading("Recall@1 vs latency")
    points = []
    for label, row in rows.items():
        timing, _ = latency_of(latency, label, row.get("runtime"))
        if timing:
            points.append((median_ms(timing), row["symmetric"]["R@1"], f"{label} [{timing.get('runtime')}]",
                           (row["symmetric"].get("ci95") or {}).get("R@1")))
    if not points:
        page.text("No latency result names a model of the recall result: nothing to plot.")
        return
    recall_latency_plot(points, page.folder / "recall_vs_latency.png")
    page.image("recall_vs_latency.png", "Recall@1 vs latency")


def add_training(page: Page, history: list[dict] | None) -> None:
    page.heading("Training")
    if history and training_curves(history, page.folder / "training.png"):
        page.image("training.png", "training curves")
    else:
        page.text("No training history given." if not history else "The history records no loss or metrics.")


def add_changed(page: Page, thumbs: Thumbnails, flt: Embedded, quant: Embedded, work: Path) -> None:
    changed = changed_top1(flt, quant)
    n = len(flt.top1)
    lost = int((flt.hits[changed, 0] & ~quant.hits[changed, 0]).sum())
    gained = int((~flt.hits[changed, 0] & quant.hits[changed, 0]).sum())
    if not len(changed):
        page.text(f"Changed top-1: none of the {n} queries (0 %): {quant.label} finds the same nearest image "
                  f"as {flt.label} for every query.")
        return
    page.text(f"Changed top-1: {len(changed)} of {n} queries ({100.0 * len(changed) / n:.1f} %); "
              f"right -> wrong: {lost}, wrong -> right: {gained}, otherwise another image of the same verdict."
              + (f" The first {MAX_CHANGED_ROWS} are shown." if len(changed) > MAX_CHANGED_ROWS else ""))
    changed_grid(thumbs, changed[:MAX_CHANGED_ROWS].tolist(), flt, quant, work / "changed_top1.png")
    page.image("changed_top1.png", "queries whose top-1 changed")


def add_worst(page: Page, thumbs: Thumbnails, flt: Embedded, images, work: Path) -> None:
    recall = per_class_recall(flt, images.labels, images.num_classes)
    worst = worst_classes(recall)
    counts = np.bincount(images.labels, minlength=images.num_classes)
    table = []
    for c in worst:
        wrong = images.labels[flt.top1[(images.labels == c) & ~flt.hits[:, 0]]]
        confused = np.bincount(wrong, minlength=images.num_classes).argmax() if len(wrong) else None
        table.append([images.class_names[c], f"{recall[c]:.1f}", int(counts[c]),
                      images.class_names[confused] if confused is not None else "-"])
    page.table(["class", "R@1 %", "images", "most often confused with"], table)
    worst_grid(thumbs, worst, flt, images.labels, work / "worst_classes.png")
    page.image("worst_classes.png", "worst classes")
    page.text("One row per class above: its queries (blue, failures first) beside their nearest image.")


# ------------------------------------------------------------------------------------------------ CLI


def load_json(path: str, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MobileKDError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise MobileKDError(f"{what} {path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MobileKDError(f"{what} {path} is not a readable JSON file: {error}") from None


def merge_results(paths: list[str], kind: str) -> dict | None:
    """Several result JSONs of one kind as one (their rows and models joined); a label twice is an error."""
    merged = None
    for path in paths:
        data = load_json(path, f"--{kind}")
        try:
            result_rows(data, kind)
        except MobileKDError as error:
            raise MobileKDError(f"{path}: {error}") from None
        if merged is None:
            merged = {**data, "results": list(data["results"]), "models": list(data.get("models", []))}
            continue
        twice = {r["model"] for r in merged["results"]} & {r["model"] for r in data["results"]}
        if kind == "recall" and twice:
            raise MobileKDError(f"{path} measures {', '.join(sorted(twice))} again: give each model once")
        merged["results"] += data["results"]
        merged["models"] += data.get("models", [])
    return merged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.html_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recall", required=True, nargs="+", metavar="R.json",
                        help="benchmarks.recall result(s) (run with --save-embeddings)")
    parser.add_argument("--latency", nargs="+", metavar="L.json", help="benchmarks.latency result(s)")
    parser.add_argument("--embeddings", required=True, metavar="DIR", help="the --save-embeddings folder of recall")
    parser.add_argument("--data", required=True, help="the data set the recall result measured")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"))
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--history", metavar="H.json", help="a run's history.json (training curves)")
    parser.add_argument("--float", required=True, dest="float_student", metavar="LABEL",
                        help="label of the float student")
    parser.add_argument("--quantized", metavar="LABEL", help="label of the quantized model")
    parser.add_argument("--teacher", metavar="LABEL", help="label of the teacher")
    parser.add_argument("--title", default="mobilekd model report")
    parser.add_argument("--queries", type=int, default=8, help="sampled queries in the retrieval grid (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    parser.add_argument("--out", required=True, help="output folder (index.html, report.md, PNGs)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.queries < 1:
        raise MobileKDError(f"--queries must be >= 1, got {args.queries}")
    check_writable_dir(args.out)
    history = load_json(args.history, "--history") if args.history else None
    if history is not None and not isinstance(history, list):
        raise MobileKDError(f"--history {args.history} is not a run's history.json (a list of epochs)")
    if not Path(args.embeddings).is_dir():
        raise MobileKDError(f"--embeddings {args.embeddings} is not a folder")
    paths = write_html_report(args.out, recall=merge_results(args.recall, "recall"),
                              latency=merge_results(args.latency, "latency") if args.latency else None,
                              embeddings_dir=args.embeddings, data=args.data, split=args.split, layout=args.layout,
                              history=history, teacher=args.teacher, float_student=args.float_student,
                              quantized=args.quantized, title=args.title, queries=args.queries, seed=args.seed)
    print(paths["html"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

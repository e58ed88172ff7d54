"""A Markdown report with plots from latency and recall result JSONs.

    python -m benchmarks.report RESULTS.json... --out DIR [--compare BASE:OTHER ...] [--allow-mixed-machines]

Writes ``DIR/report.md`` with one table per question -- quality (Recall@K, MAP@R, R-Precision, symmetric
and asymmetric), speed (median / p90 / min / stdev per runtime x threads, floor ratio, peak memory), size
(file size, parameters, MACs) -- optional comparisons (latency speed-up and Recall@1 change of OTHER vs
BASE), and ``DIR/recall_vs_latency.png`` (Recall@1 against median latency, one point per model x runtime
at the fewest threads measured, Pareto front drawn) and ``DIR/latency_by_threads.png``.

Results from different machines (``machine.fingerprint``: CPU, cores, OS, Python, library versions) are
refused unless ``--allow-mixed-machines``; then every table names the machine of each row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.machine import short_name
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_writable_dir


def load_results(paths: list[str]) -> list[dict]:
    results = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MobileKDError(f"result file not found: {path}") from None
        except IsADirectoryError:
            raise MobileKDError(f"{path} is a directory, not a result JSON file") from None
        except UnicodeDecodeError:
            raise MobileKDError(f"{path} is not a result JSON: it is not text (a binary file?)") from None
        except (OSError, json.JSONDecodeError) as error:
            raise MobileKDError(f"{path} is not a readable result JSON: {error}") from None
        check_result_format(data, path)
        data["_file"] = str(path)
        results.append(data)
    return results


def check_result_format(data, path) -> None:
    """The shape ``build_report`` reads: a latency/recall result with a ``machine`` object and a ``results`` list
    of objects (anything else would fail deep in the report with a KeyError or TypeError)."""
    if not isinstance(data, dict) or data.get("kind") not in ("latency", "recall") or "machine" not in data:
        raise MobileKDError(f"{path} is not a benchmarks result (needs 'kind' latency|recall and 'machine')")
    latency = data["kind"] == "latency"
    rows = ("model", "runtime", "threads") if latency else ("model", "symmetric")
    lists = {"results": rows, **({"models": ("label",)} if latency else {})}
    if not isinstance(data["machine"], dict) or not (latency or isinstance(data.get("data"), dict)) or not all(
            isinstance(data.get(name), list) and all(isinstance(row, dict) and all(k in row for k in keys)
                                                     for row in data[name]) for name, keys in lists.items()):
        wanted = "; ".join(f"'{name}': a list of objects with {', '.join(keys)}" for name, keys in lists.items())
        raise MobileKDError(f"{path} is not a {data['kind']} result: needs 'machine'"
                            f"{'' if latency else ' and data'} objects; {wanted}")


def check_machines(results: list[dict], allow_mixed: bool) -> dict[str, str]:
    """fingerprint -> short machine name; raises if several machines and not allowed."""
    machines = {}
    for r in results:
        if r["kind"] == "recall":  # quality does not depend on the machine's speed
            continue
        machines.setdefault(r["machine"].get("fingerprint", "?"), short_name(r["machine"]))
    if len(machines) > 1 and not allow_mixed:
        raise MobileKDError("latency results come from different machines (" + "; ".join(machines.values()) +
                            "): timings are not comparable; pass --allow-mixed-machines to report them side by side")
    return machines


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _best_latency(latency_rows: list[dict]) -> dict:
    """(model, runtime) -> the row at the fewest threads (single-thread latency where measured)."""
    best = {}
    for row in latency_rows:
        key = (row["model"], row["runtime"])
        if key not in best or row["threads"] < best[key]["threads"]:
            best[key] = row
    return best


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency x, higher recall y), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def recall_latency_plot(points: list[tuple], path: Path, title: str = "Recall@1 vs latency (fewest threads measured)"
                        ) -> None:
    """Recall@1 against median latency, written to ``path``. ``points``: (ms, R@1, label) or (ms, R@1, label,
    [lo, hi] interval or None). Each model is its own marker and colour, named in the key below the axes with
    its values: no text is drawn among the points, so nothing can overlap however close the models sit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = sorted(points, key=lambda p: (p[0], -p[1]))  # the key lists the fastest first
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = pareto_front([(p[0], p[1]) for p in points])
    ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="0.6",
            linestyle="--", zorder=1, label="Pareto front")
    for i, (x, y, label, *rest) in enumerate(points):
        ci = rest[0] if rest else None
        yerr = [[y - ci[0]], [ci[1] - y]] if ci else None
        ax.errorbar([x], [y], yerr=yerr, marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", markersize=8,
                    capsize=3, linestyle="none", zorder=3,
                    label=f"{label}: {x:.3g} ms, R@1 {y:.2f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.15, y=0.15)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "Pareto front")  # models first
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper left",
              bbox_to_anchor=(0.0, -0.16), borderaxespad=0, ncol=1)
    ax.set_xlabel("median latency, batch 1 (ms, log scale)")
    ax.set_ylabel("Recall@1 (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _name_repeated_runs(latency: list[dict]) -> None:
    """Give each latency row a ``_name``: its model label, plus its source file's name where the same
    label and runtime were measured in several files -- two runs of one model are two lines, not one zigzag."""
    sources: dict[tuple[str, str], set[str]] = {}
    for row in latency:
        sources.setdefault((row["model"], row["runtime"]), set()).add(row["_source"])
    for row in latency:
        repeated = len(sources[(row["model"], row["runtime"])]) > 1
        row["_name"] = f"{row['model']} ({row['_source']})" if repeated else row["model"]


def model_labels(results: list[dict]) -> list[str]:
    """Every model label the results name (latency models and rows, recall rows), in first-seen order."""
    labels: dict[str, None] = {}
    for r in results:
        for row in r.get("models", []):
            labels.setdefault(row["label"], None)
        for row in r["results"]:
            labels.setdefault(row["model"], None)
    return list(labels)


def compare_pairs(compare: list[str], labels: list[str]) -> list[tuple[str, str]]:
    """``BASE:OTHER`` strings as label pairs; refuses (before any work) a malformed pair or a label that no
    result names -- an unknown label would otherwise give an empty row that looks like a measurement."""
    pairs = []
    for pair in compare:
        if ":" not in pair:
            raise MobileKDError(f"--compare expects BASE:OTHER model labels, got {pair!r}")
        pairs.append(tuple(pair.split(":", 1)))
    unknown = list(dict.fromkeys(label for pair in pairs for label in pair if label not in labels))
    if unknown:
        raise MobileKDError(f"--compare names unknown model label(s) {', '.join(unknown)}; the results have: "
                            f"{', '.join(labels) or 'none'}")
    return pairs


def build_report(results: list[dict], out: Path, compare: list[str] | None = None,
                 allow_mixed: bool = False, title: str = "mobilekd benchmark report") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    machines = check_machines(results, allow_mixed)
    compare_pairs(compare or [], model_labels(results))
    mixed = len(machines) > 1
    out.mkdir(parents=True, exist_ok=True)
    latency, models, recall, notes = [], {}, {}, []
    for r in results:
        mname = short_name(r["machine"])
        if r["kind"] == "latency":
            for row in r["results"]:
                latency.append({**row, "_machine": mname, "_load": r.get("load_average"), "_source": Path(r["_file"]).stem})
            for m in r["models"]:
                models.setdefault(m["label"], m)
            for item in r.get("not_runnable", []):
                notes.append(f"not runnable on {mname}: {item['model']} [{item['runtime']}]: {item['reason']}")
        else:
            for row in r["results"]:
                recall[row["model"]] = {**row, "_data": r["data"]}

    _name_repeated_runs(latency)
    lines = [f"# {title}", ""]
    lines += ["Machines: " + "; ".join(sorted({short_name(r['machine']) for r in results})) + "."]
    loads = [f"{Path(r['_file']).name}: {r.get('load_average')}" for r in results if r["kind"] == "latency"]
    if loads:
        lines += ["", "Load average (1/5/15 min) around each latency run -- a shared machine makes timings noisy: "
                  + "; ".join(loads) + "."]

    # quality
    if recall:
        lines += ["", "## Quality (retrieval, %)", "",
                  "| model | data | R@1 | R@2 | R@4 | R@8 | MAP@R | R-Precision |", "|---|---|---|---|---|---|---|---|"]
        for name, row in recall.items():
            data = f"{Path(row['_data']['path']).name}:{row['_data']['split']} ({row['_data']['images']} img)"
            for tag, metrics in (("", row["symmetric"]), (" -> " + row.get("asymmetric", {}).get("gallery", ""), row.get("asymmetric"))):
                if metrics:
                    lines.append(f"| {name}{tag} | {data} | " + " | ".join(
                        _f(metrics.get(k)) for k in ("R@1", "R@2", "R@4", "R@8", "MAP@R", "R-Precision")) + " |")
        lines += ["", "`A -> B`: queries embedded by A searched in a gallery embedded by B (asymmetric)."]

    # speed
    if latency:
        lines += ["", "## Speed (batch 1, ms)", ""]
        head = "| model | runtime | device | threads | median | p90 | min | stdev | floor ratio | peak MB |"
        if mixed:
            head = "| machine " + head
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for row in sorted(latency, key=lambda r: (r["model"], r["runtime"], r["threads"])):
            cells = (f"| {row['_name']} | {row['runtime']} | {row.get('device', 'cpu')} | {row['threads']} | "
                     f"{_f(row.get('median_ms') if row.get('median_ms') is not None else row.get('mean_ms'), 3)} | "
                     f"{_f(row.get('p90_ms'), 3)} | {_f(row.get('min_ms'), 3)} | {_f(row.get('stdev_ms'), 3)} | "
                     f"{_f(row.get('floor_ratio'), 1)} | {_f(row.get('peak_mem_mb'), 1)} |")
            lines.append((f"| {row['_machine']} " if mixed else "") + cells)
        lines += ["", "floor ratio = median / (MACs x 2 / peak matmul FLOP/s of this CPU at the same threads and "
                  "precision, measured in the same run). Rows without a median (adb `benchmark_model`) show the mean."]

    # size
    if models:
        lines += ["", "## Size", "", "| model | kind | precision | file MB | params (M) | MACs (M) | input |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in models.items():
            size = m.get("file_bytes")
            lines.append(f"| {name} | {m['kind']} | {m.get('precision')} | {_f(size / 1e6 if size else None)} | "
                         f"{_f(m['params'] / 1e6 if m.get('params') else None, 3)} | "
                         f"{_f(m['macs'] / 1e6 if m.get('macs') else None, 1)} | {m.get('macs_input_hw') or m.get('input_size')} |")

    # comparisons
    if compare:
        lines += ["", "## Comparisons", "", "| other vs base | runtime | threads | speed-up (base / other median) "
                  "| R@1 base | R@1 other | R@1 change (points) | R@1 ratio |", "|---|---|---|---|---|---|---|---|"]
        for base, other in compare_pairs(compare, model_labels(results)):
            r_base = recall.get(base, {}).get("symmetric", {}).get("R@1")
            r_other = recall.get(other, {}).get("symmetric", {}).get("R@1")
            rows_base = {(r["runtime"], r["threads"]): r for r in latency if r["model"] == base}
            rows_other = {(r["runtime"], r["threads"]): r for r in latency if r["model"] == other}
            keys = sorted(set(rows_base) & set(rows_other)) or [(None, None)]
            if keys == [(None, None)] and rows_base and rows_other:  # different runtimes: compare each pair at equal threads
                keys = sorted({(a, b) for a in rows_base for b in rows_other if a[1] == b[1]})
            for key in keys:
                if key == (None, None):
                    speed, runtime, threads = None, "-", "-"
                elif isinstance(key[0], tuple):
                    a, b = key
                    speed = rows_base[a]["median_ms"] / rows_other[b]["median_ms"]
                    runtime, threads = f"{a[0]} vs {b[0]}", a[1]
                else:
                    speed = rows_base[key]["median_ms"] / rows_other[key]["median_ms"]
                    runtime, threads = key
                change = r_other - r_base if r_base is not None and r_other is not None else None
                ratio = r_other / r_base if r_base and r_other is not None else None
                lines.append(f"| {other} vs {base} | {runtime} | {threads} | {_f(speed)} | {_f(r_base)} | "
                             f"{_f(r_other)} | {_f(change)} | {_f(ratio, 3)} |")

    # plots
    figures = []
    best = _best_latency(latency)
    points = [(row["median_ms"] if row.get("median_ms") is not None else row.get("mean_ms"),
               recall[model]["symmetric"]["R@1"], f"{model} [{runtime}, {row['threads']}t]")
              for (model, runtime), row in best.items() if model in recall]
    points = [p for p in points if p[0]]
    if points:
        recall_latency_plot(points, out / "recall_vs_latency.png")
        figures.append(("Recall@1 vs latency", "recall_vs_latency.png"))
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series = {}
        for row in latency:
            value = row["median_ms"] if row.get("median_ms") is not None else row.get("mean_ms")
            if value:
                series.setdefault(f"{row['_name']} [{row['runtime']}]", []).append(
                    (row["threads"], value, row.get("min_ms") or value, row.get("p90_ms") or value))
        for name, values in sorted(series.items()):
            values.sort()
            xs, ys = [v[0] for v in values], [v[1] for v in values]
            err = [[y - v[2] for y, v in zip(ys, values)], [v[3] - y for y, v in zip(ys, values)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_yscale("log")
        # plain numbers (0.5, 2) rather than 5x10^-1; minor ticks labelled at 2 and 5 only, so they never crowd
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("threads")
        ax.set_xticks(sorted({row["threads"] for row in latency}))
        ax.set_ylabel("median latency (ms, log; bars: min..p90)")
        ax.set_title("Latency by threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside, never on a line
        fig.savefig(out / "latency_by_threads.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        figures.append(("Latency by threads", "latency_by_threads.png"))
    if figures:
        lines += ["", "## Plots", ""] + [f"![{t}]({f})" for t, f in figures]
    if notes:
        lines += ["", "## Not measured", ""] + [f"- {n}" for n in notes]
    lines += ["", "Sources: " + ", ".join(f"`{Path(r['_file']).name}`" for r in results), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="result JSONs of benchmarks.latency / recall")
    parser.add_argument("--out", required=True, help="output folder for report.md and the PNGs")
    parser.add_argument("--compare", action="append", default=[], metavar="BASE:OTHER",
                        help="add speed-up and Recall@1 change of model OTHER vs model BASE (labels)")
    parser.add_argument("--title", default="mobilekd benchmark report")
    parser.add_argument("--allow-mixed-machines", action="store_true")
    args = parser.parse_args(argv)
    check_writable_dir(args.out)
    report = build_report(load_results(args.results), Path(args.out), args.compare, args.allow_mixed_machines, args.title)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The measurements behind the default neighbour-overlap and noise-to-spread gates of ``export.parity``.

    python -m benchmarks.gate_defaults SOURCE... [--results benchmarks/results/gate_defaults/gate_defaults]

SOURCE is an export folder (the parity report in its ``model.json``) or a ``benchmarks.export_matrix``
RESULTS.json. For every file whose embeddings were measured through its runtime the table gives the precision,
mean cosine, top-10 neighbour overlap and noise-to-spread ratio vs the float student, the float embeddings'
mean pairwise cosine (how crowded the student is), the Recall@1 drop, and two verdicts at the current defaults:
the mean-cosine / Recall@1 gates alone ("old") and with the neighbour and noise gates ("all"). Per precision
it lists the range of overlap and noise ratio among the files the old gates pass. Nothing is re-measured:
the numbers are the exporters' own parity reports. Writes ``RESULTS.md`` and ``RESULTS.json`` (with the
machine description).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import command_line, publish
from benchmarks.export_matrix import row_of
from mobilekd.errors import MobileKDError, cli_entry


def precision_key(label: str) -> str:
    """export_matrix's precision label ("int8, first 2 convs float", "dynamic int8") -> a gates key."""
    return "dynamic" if label.startswith("dynamic") else label.split(",")[0].strip()


def load_rows(source: str) -> list[dict]:
    path = Path(source)
    try:
        if path.is_dir():
            manifest = json.loads((path / "model.json").read_text())
            row = row_of(manifest["runtime"], {"fp32": "none"}.get(manifest["precision"], manifest["precision"]),
                         manifest, 0.0, 0)
            return [{**row, "source": str(path), "precision": manifest["precision"]}]
        data = json.loads(path.read_text())
        return [{**row, "source": f"{path.name} ({data.get('checkpoint')})"} for row in data["rows"]]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise MobileKDError(f"{source} is neither an export folder nor an export_matrix JSON: {error}") from None


def verdicts(row: dict) -> tuple[bool, bool | None]:
    """(passes the mean-cosine / Recall@1 gates, passes every default gate; None where not recorded)."""
    from export.parity import DEFAULT_GATES

    gates = DEFAULT_GATES[precision_key(row["precision"])]
    old = row["mean_cos"] >= gates.min_mean_cos and (gates.max_r1_drop is None or row.get("r1_drop") is None
                                                      or row["r1_drop"] <= gates.max_r1_drop)
    if row.get("noise_ratio") is None:
        return old, None
    return old, bool(old and row["top10_overlap"] >= gates.min_topk_overlap
                     and row["noise_ratio"] <= gates.max_noise_ratio)


def _f(value, spec: str) -> str:
    return "not recorded" if value is None else format(value, spec)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="export folders or export_matrix JSONs")
    parser.add_argument("--results", default="benchmarks/results/gate_defaults/gate_defaults")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe
    from export.parity import DEFAULT_GATES

    rows = [row for source in args.sources for row in load_rows(source) if row.get("scope") == "runtime"]
    for row in rows:
        row["passes_old_gates"], row["passes_all_gates"] = verdicts(row)
    lines = ["| source | format | precision | mean cos | top-10 overlap | noise/spread | float pairwise cos "
             "| R@1 drop | old gates | all gates |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['source']} | {r['format']} | {r['precision']} | {r['mean_cos']:.6f} | "
                     f"{r['top10_overlap']:.3f} | {_f(r.get('noise_ratio'), '.3g')} | "
                     f"{_f(r.get('float_pairwise_cos'), '.4f')} | {_f(r.get('r1_drop'), '+.2f')} | "
                     f"{'PASS' if r['passes_old_gates'] else 'FAIL'} | "
                     f"{ {True: 'PASS', False: '**FAIL**', None: '-'}[r['passes_all_gates']]} |")
    summary = {}
    lines += ["", "Among the files the old gates pass, per precision:", ""]
    for key in DEFAULT_GATES:
        good = [r for r in rows if precision_key(r["precision"]) == key and r["passes_old_gates"]]
        ratios = [r["noise_ratio"] for r in good if r.get("noise_ratio") is not None]
        if good:
            summary[key] = {"files": len(good), "min_top10_overlap": min(r["top10_overlap"] for r in good),
                            "max_noise_ratio": max(ratios) if ratios else None,
                            "defaults": DEFAULT_GATES[key].to_dict()}
            lines.append(f"- {key}: {len(good)} file(s), top-10 overlap >= {summary[key]['min_top10_overlap']:.3f}, "
                         f"noise/spread <= {_f(summary[key]['max_noise_ratio'], '.3g')}; defaults now: "
                         f"overlap >= {DEFAULT_GATES[key].min_topk_overlap}, "
                         f"noise/spread <= {DEFAULT_GATES[key].max_noise_ratio}")
    command = command_line("benchmarks.gate_defaults", argv)
    text = f"# Parity gates: overlap and noise-to-spread of measured files\n\nCommand: `{command}`\n\n" + \
        "\n".join(lines) + "\n"
    publish(args.results, text, {"command": command, "machine": describe(), "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())

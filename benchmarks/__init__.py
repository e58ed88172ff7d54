"""Benchmarks: latency, size, MACs and retrieval quality of checkpoints and exported models, and a report.

* ``python -m benchmarks.latency MODEL...`` -- per runtime x threads latency, memory, size, params, MACs and
  the ratio to a measured compute floor of this CPU (``benchmarks.latency``).
* ``python -m benchmarks.recall MODEL... --data DATA`` -- Recall@K / MAP@R / R-Precision, symmetric and
  asymmetric (``benchmarks.recall``).
* ``python -m benchmarks.report RESULTS... --out DIR`` -- Markdown tables and PNG plots (``benchmarks.report``).

Every result JSON is written by ``write_result``: it carries ``machine`` (``benchmarks.machine.describe``) so
runs from different machines never mix silently, and ``git_commit`` so each number can be traced to its code.
"""

RESULT_FORMAT = "mobilekd-bench/1"


def comma_choices(text: str, allowed, what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``, each one of ``allowed``; otherwise one clear error naming the choices."""
    from mobilekd.errors import MobileKDError

    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown:
        raise MobileKDError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def command_line(module: str, argv=None) -> str:
    """The command that produced a result, as a user would type it again (``argv`` defaults to ``sys.argv``)."""
    import sys

    return f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, and one line per row of cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def publish(prefix: str | None, report: str, result: dict) -> None:
    """Print ``report`` and, when ``prefix`` is given, write it and ``result`` (``write_report``)."""
    print(report)
    if prefix:
        write_report(prefix, report, result)


def write_report(prefix: str, report: str, result: dict) -> None:
    """``PREFIX.md`` (the Markdown report) and ``PREFIX.json`` (``result``: command, machine, args, rows ...),
    each written atomically: a kill never leaves a half-written table or JSON."""
    from pathlib import Path

    from mobilekd.io import atomic_path

    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(prefix + ".md") as tmp:
        Path(tmp).write_text(report)
    write_result(prefix + ".json", result)


def stamp(result: dict) -> dict:
    """``result`` with ``git_commit`` (``benchmarks.machine.git_commit``: HEAD, ``-dirty`` with uncommitted
    changes, None outside a checkout) and ``machine`` (``describe()``, unless the caller already measured it)."""
    from benchmarks.machine import describe, git_commit

    stamped = dict(result)
    stamped["git_commit"] = git_commit()
    if not isinstance(stamped.get("machine"), dict):
        stamped["machine"] = describe()
    return stamped


def write_result(path, result: dict) -> None:
    """Write one result JSON atomically, stamped with the git commit and machine (``stamp``): the single
    writer every benchmark uses for its results, so no result file lacks either."""
    from mobilekd.io import write_json

    write_json(path, stamp(result))

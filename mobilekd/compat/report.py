"""Markdown for the results of the compat workflows (each ``format_*`` takes the dict its workflow returns)."""

from __future__ import annotations

from pathlib import Path

from mobilekd.io import atomic_path


def write_markdown(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a killed run leaves no half-written report)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def format_fit(manifest: dict) -> str:
    """The ``fit.md`` of a ``compat.json`` manifest: one row per fitted gallery model."""
    config = manifest["fit"]
    lines = ["# Compatible-embedding transformations", "",
             f"query model `{manifest['query']}` ({manifest['query_dim']}-d), fitted on the {manifest['split']} "
             f"split of `{manifest['data']}` ({manifest['images']} images), head `{config['head']}`, kl_weight "
             f"{config['kl_weight']}", "",
             "| gallery model | dims | train mean cosine to the query embedding |", "|---|---|---|"]
    lines += [f"| {e['gallery']} | {e['in_dim']} -> {e['out_dim']} | {e['train_mean_cosine']:.4f} |"
              for e in manifest["transforms"]]
    return "\n".join(lines) + "\n"


def format_evaluation(result: dict) -> str:
    lines = [f"Asymmetric retrieval on {result['data']} ({result['split']} split, {result['images']} images, "
             f"{result['classes']} classes); queries: `{result['query']}`; head `{result['head']}`", "",
             "| retrieval | R@1 | R@2 | R@4 | R@8 | MAP@R |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['R@1']:.2f} | {r['R@2']:.2f} | {r['R@4']:.2f} | {r['R@8']:.2f} "
                     f"| {r['MAP@R']:.2f} |")
    lines += ["", f"**{result['verdict']}**", "", "Gallery rejection (ensemble gallery, most uncertain removed; "
              "random = mean of 5 random removals):", "",
              "| rejected | gallery kept | queries scored | R@1 | MAP@R | random R@1 | random MAP@R |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rejection"]:
        lines.append(f"| {100 * r['reject_fraction']:.0f} % | {r['gallery_kept']} | {r['queries']} | {r['R@1']:.2f} "
                     f"| {r['MAP@R']:.2f} | {r.get('random_R@1', float('nan')):.2f} "
                     f"| {r.get('random_MAP@R', float('nan')):.2f} |")
    return "\n".join(lines)


def sized(size: int | None) -> str:
    return f" at {size} px" if size else ""


def format_upgrade(result: dict) -> str:
    lines = [f"Upgrade check on {result['data']} ({result['split']} split, {result['images']} images): "
             f"old `{result['old']}`{sized(result.get('old_size'))} ({result['old_dim']}-d), new "
             f"`{result['new']}`{sized(result.get('new_size'))} ({result['new_dim']}-d)", "",
             "| queries -> gallery | R@1 | MAP@R |", "|---|---|---|"]
    for key in ("old->old", "new->new", "new->old", "old->new"):
        m = result.get(key)
        lines.append(f"| {key} | " + (f"{m['R@1']:.2f} | {m['MAP@R']:.2f} |" if m else "- | - |"))
    lines += ["", f"**{result['verdict']}**"]
    return "\n".join(lines)


def format_teacher(result: dict) -> str:
    tt = result["teacher->teacher"]
    lines = [f"Student -> teacher gallery on {result['data']} ({result['split']} split, {result['images']} images); "
             f"teacher `{result['teacher']}`: teacher->teacher R@1 {tt['R@1']:.2f}, MAP@R {tt['MAP@R']:.2f}", "",
             "| student | student->student R@1 | student->teacher R@1 | student->teacher MAP@R | query mapping |",
             "|---|---|---|---|---|"]
    for r in result["students"]:
        st = r["student->teacher"]
        lines.append(f"| {r['student']} | {r['student->student']['R@1']:.2f} | "
                     + (f"{st['R@1']:.2f} | {st['MAP@R']:.2f}" if st else "- | -") + f" | {r['via']} |")
    return "\n".join(lines)

"""The pictures of ``benchmarks.html_report``: framed thumbnail grids (Pillow) and training curves (matplotlib).

A grid is rows of framed tiles under column headers: the query framed blue, each neighbour green (same class)
or red (another class). Models are duck-typed: anything with ``label``, ``neighbors`` (N, TOP) and ``hits``
(N, TOP) -- ``benchmarks.html_report.Embedded``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

TOP = 5  # neighbours shown per query
TILE = 96  # thumbnail side, pixels
FRAME = 4
GREEN, RED, BLUE, WHITE = (0, 150, 60), (215, 30, 30), (40, 90, 200), (255, 255, 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def tile(image, color) -> "Image.Image":
    """``image`` fitted (aspect kept) into a TILE square, framed in ``color``."""
    from PIL import Image, ImageOps

    framed = Image.new("RGB", (TILE + 2 * FRAME, TILE + 2 * FRAME), color)
    framed.paste(ImageOps.pad(image, (TILE, TILE), color=WHITE), (FRAME, FRAME))
    return framed


def compose_grid(rows: list[list], headers: list[str], path: Path, gap: int = 18) -> None:
    """A PNG of framed thumbnails: ``rows`` of cells (a framed tile, or None for a gap between groups) under
    one header per column (blank for none; a header may run over the blank-headed columns after it)."""
    from PIL import Image, ImageDraw

    side, head, pad = TILE + 2 * FRAME, 34, 4
    widths = [side if any(r[c] is not None for r in rows) else gap for c in range(len(headers))]
    lefts = np.concatenate([[pad], pad + np.cumsum([w + pad for w in widths])]).tolist()
    canvas = Image.new("RGB", (lefts[-1], head + len(rows) * (side + pad) + pad), WHITE)
    draw, font = ImageDraw.Draw(canvas), _font(12)
    for c, text in enumerate(headers):
        end = next((e for e in range(c + 1, len(headers)) if headers[e] or widths[e] == gap), len(headers))
        for line, part in enumerate(_wrap(text, lefts[end] - lefts[c] - pad, font, draw)[:2]):
            draw.text((lefts[c], 2 + 15 * line), part, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is not None:
                canvas.paste(cell, (lefts[c], head + r * (side + pad)))
    canvas.save(path, optimize=True)


def _wrap(text: str, width: int, font, draw) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words cut if they must be)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    return [_cut(part, width, font, draw) for part in lines if part]


def _cut(text: str, width: int, font, draw) -> str:
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


class Thumbnails:
    """Each image of the set decoded once, as framed tiles on demand."""

    def __init__(self, images):
        self.images, self.cache = images, {}

    def __call__(self, index: int, color) -> "Image.Image":
        if index not in self.cache:
            self.cache[index] = self.images.load_image(int(index))
        return tile(self.cache[index], color)

    def neighbors(self, query: int, model, count: int = TOP) -> list:
        return [self(n, GREEN if hit else RED) for n, hit in zip(model.neighbors[query][:count],
                                                                  model.hits[query][:count])]


# ------------------------------------------------------------------------------------------------ grids


def retrieval_grid(thumbs: Thumbnails, sample: list[int], models: list, path: Path) -> None:
    headers = ["query"]
    rows = [[thumbs(q, BLUE)] for q in sample]
    for model in models:
        headers += ["", f"{model.label}: top {TOP}"] + [""] * (TOP - 1)
        for row, q in zip(rows, sample):
            row += [None] + thumbs.neighbors(q, model)
    compose_grid(rows, headers, path)


def changed_grid(thumbs: Thumbnails, changed: list[int], float_model, quantized, path: Path) -> None:
    rows = [[thumbs(q, BLUE), None, *thumbs.neighbors(q, float_model, 1), None, *thumbs.neighbors(q, quantized, 1)]
            for q in changed]
    compose_grid(rows, ["query", "", f"{float_model.label} #1", "", f"{quantized.label} #1"], path)


def worst_grid(thumbs: Thumbnails, classes: list[int], model, labels: np.ndarray, path: Path,
               examples: int = 3) -> None:
    """Per worst class: up to ``examples`` of its queries, each beside its top-1 (failures first)."""
    rows = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(model.hits[members, 0], kind="stable")][:examples]
        row = []
        for q in members:
            row += [thumbs(q, BLUE), *thumbs.neighbors(q, model, 1), None]
        rows.append(row + [None] * (3 * examples - len(row)))
    compose_grid(rows, ["query", "its #1", ""] * examples, path)


def training_curves(history: list[dict], path: Path) -> bool:
    """Loss terms per epoch and, where recorded, evaluation R@1 / MAP@R per epoch; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if isinstance(h, dict) and isinstance(h.get("epoch"), (int, float))]
    losses = sorted({k for h in rows for k, v in h.items() if k.startswith("loss") and _number(v)})
    evals = sorted({k for h in rows for k, v in h.items() if isinstance(v, dict) and "R@1" in v})
    if not losses and not evals:
        return False
    both = bool(losses and evals)
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(10 if both else 6, 3.8), squeeze=False, sharex=True)
    axes = list(axes[0])
    if losses:
        _plot_losses(axes.pop(0), rows, losses)
    if evals:
        _plot_evals(axes.pop(0), rows, evals)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plot_losses(ax, rows: list[dict], keys: list[str]) -> None:
    for key in keys:
        points = [(h["epoch"], h[key]) for h in rows if _number(h.get(key))]
        ax.plot(*zip(*points), marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


def _plot_evals(ax, rows: list[dict], keys: list[str]) -> None:
    """R@1 solid with circles, MAP@R dotted with squares, one colour per evaluated set; the key sits outside."""
    for i, key in enumerate(keys):
        for metric, style, marker in (("R@1", "-", "o"), ("MAP@R", ":", "s")):
            points = [(h["epoch"], h[key][metric]) for h in rows
                      if isinstance(h.get(key), dict) and _number(h[key].get(metric))]
            if points:
                ax.plot(*zip(*points), marker=marker, linestyle=style, color=f"C{i}", label=f"{key} {metric}")
    ax.set(xlabel="epoch", ylabel="%", title="Evaluation during training")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(True, alpha=0.3)

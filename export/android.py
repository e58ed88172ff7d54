"""The ``android/`` folder: exactly what ``android_demo`` reads from ``app/src/main/assets/``.

``write_android_folder(model_dir, dest)`` copies an export folder's ``model.tflite`` + ``model.json`` into
``dest`` and, with ``gallery=``, embeds a folder of photos with that very ``.tflite`` file (through
``mobilekd.runtime``, the evaluation view of model.json's preprocess) and writes them as ``gallery/`` for
on-device search, so that ``cp -r DEST/. android_demo/app/src/main/assets/`` is the whole integration step.

Gallery format (``gallery/gallery.json``, format ``mobilekd-gallery/1``; read by android_demo/core
``GalleryIndex.kt`` and by ``read_gallery`` here; every field required)::

    format         "mobilekd-gallery/1"
    model_file     "model.tflite"            the model that made the embeddings (beside gallery/)
    model_sha256   sha256 of that file       (must equal model.json's model_sha256 and the file's own)
    embed_dim      D
    count          N                         (N >= 1)
    precision      "int8" | "fp16"
    embeddings     "embeddings.i8" (int8: N*D signed bytes) | "embeddings.f16" (fp16: N*D IEEE half, little
                   endian); row-major, row i = image i
    scales         "scales.f32" (int8: N float32 little endian, row i's values = scales[i] * q) | null (fp16)
    ids            [N strings]               the image's path relative to the gallery folder given
    thumbnails     [N paths]                 relative to gallery/: JPEG, longest side <= thumbnail_size
    thumbnail_size int

The stored vectors are the model's L2-normalised embeddings quantised per row (int8: symmetric, scale =
max|v| / 127) or cast to fp16; a reader dequantises and L2-normalises them again, and searches by cosine
(ties by row order). A marker (``.mobilekd-android.json``, a dot file Android's asset packaging skips) lists what
was written, so a later run may replace the folder and never one holding other files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from mobilekd.errors import DataError, MobileKDError, ModelError, cli_entry
from mobilekd.io import check_replaceable, check_writable_dir, mark_owned, replace_folder, sha256_file, write_json
from mobilekd.runtime.contract import ModelContract

GALLERY_FORMAT = "mobilekd-gallery/1"
GALLERY_PRECISIONS = ("int8", "fp16")
GALLERY_FIELDS = ("format", "model_file", "model_sha256", "embed_dim", "count", "precision", "embeddings", "scales",
                  "ids", "thumbnails", "thumbnail_size")
MARKER, TOOL = ".mobilekd-android.json", "mobilekd-android"
THUMBNAIL_SIZE, THUMBNAIL_QUALITY = 96, 85
APP_DTYPES = ("float32", "uint8", "int8")  # the tensors android_demo can feed / read (ContractFields.APP_DTYPES)
BATCH = 32


# ------------------------------------------------------------------------------------------ the model folder


def read_export(model_dir: str | Path) -> tuple[Path, ModelContract, str]:
    """(model file, contract, sha256) of an export folder holding a TFLite model and its model.json; one clear
    error when it is missing, not an export folder, not a TFLite export, or the file changed since export."""
    folder = Path(model_dir).expanduser()
    if not folder.exists():
        raise MobileKDError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise MobileKDError(f"{folder} is a file; give the export folder (model.tflite + model.json)")
    try:
        data = json.loads((folder / "model.json").read_text())
    except FileNotFoundError:
        raise MobileKDError(f"{folder} is not an export folder: it has no model.json "
                            "(make one with python -m export.tflite CKPT --out FOLDER)") from None
    except (OSError, ValueError) as error:
        raise MobileKDError(f"{folder}/model.json cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise MobileKDError(f"{folder}/model.json is not a JSON object")
    if "runtime" not in data and "spec" in data:
        raise MobileKDError(f"{folder} is a checkpoint, not an export folder: export it first with "
                            "python -m export.tflite CKPT --out FOLDER")
    try:
        contract = ModelContract.from_dict(data)
    except MobileKDError as error:
        raise MobileKDError(f"{folder}: {error}") from None
    if contract.runtime != "tflite":
        raise MobileKDError(f"{folder} is an export for {contract.runtime}; the Android app runs .tflite files "
                            "(python -m export.tflite)")
    for side, spec in (("input", contract.input), ("output", contract.output)):
        if spec.dtype not in APP_DTYPES:
            raise MobileKDError(f"{folder}: the model's {side} is {spec.dtype}; the Android app handles "
                                f"{', '.join(APP_DTYPES)}")
    model = folder / contract.model_file
    if not model.is_file():
        raise MobileKDError(f"{folder}: model.json names {contract.model_file}, which is not there")
    digest = sha256_file(model)
    if contract.model_sha256 and contract.model_sha256.lower() != digest:
        raise MobileKDError(f"{model}: its sha256 {digest[:12]}... differs from model.json's "
                            f"{contract.model_sha256[:12]}...: the file changed after export")
    return model, contract, digest


# ------------------------------------------------------------------------------------------ the gallery


def quantize_rows(vectors: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [N, D] -> (stored values, per-row float32 scales or None): int8 symmetric per row, or fp16."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision == "fp16":
        return vectors.astype("<f2"), None
    peak = np.abs(vectors).max(axis=1)
    scales = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype("<f4")
    q = np.clip(np.round(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_rows(values: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Stored rows -> L2-normalised float32 [N, D] (what the Kotlin GalleryIndex searches)."""
    rows = values.astype(np.float64) if scales is None else scales.astype(np.float64)[:, None] * values
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise DataError("gallery holds an all-zero embedding row: corrupt file")
    return (rows / norms).astype(np.float32)


def _thumbnail(image, path: Path) -> None:
    from PIL import Image

    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BICUBIC)
    thumb.save(path, "JPEG", quality=THUMBNAIL_QUALITY)


def _open_gallery(gallery: str | Path):
    """The photos of ``gallery`` (layout 'auto': class folders, CUB, a zip, ... or 'unlabeled' below it), all
    checked to decode first so that one error names every unreadable file."""
    from mobilekd.data.image_sets import detect_layout, load_image_set, read_unlabeled

    root = Path(gallery).expanduser()
    if not root.exists():
        raise DataError(f"gallery folder not found: {root}")
    # a plain folder: every photo below it (flat or in sub-folders); a known data set layout: all its images
    if root.is_dir() and detect_layout(root) == "folder":
        images = read_unlabeled(root)
    else:
        images = load_image_set(root, layout="auto", min_per_class=1)
    bad = [why for why in (images.check_image(i) for i in range(len(images))) if why]
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"gallery {root}: {len(bad)} of {len(images)} images cannot be read: {shown}")
    return images


def embed_gallery(images, model: Path, contract: ModelContract, work: Path, threads: int,
                  progress: bool) -> np.ndarray:
    """Embeddings (float32 [N, D], unit rows) of every image's evaluation view through the .tflite file itself;
    writes each image's thumbnail into ``work`` as <index>.jpg on the way (one decode per image)."""
    import torch
    from tqdm.auto import tqdm

    from mobilekd.data.views import render_evaluation
    from mobilekd.runtime.runners import open_runtime

    runner = open_runtime(model, contract, threads)
    out, batch = [], []
    for i in tqdm(range(len(images)), desc="gallery", disable=not progress, leave=False):
        image = images.load_image(i)
        _thumbnail(image, work / f"{i:06d}.jpg")
        batch.append(render_evaluation(image, contract.preprocess))
        if len(batch) == BATCH or i == len(images) - 1:
            out.append(runner(torch.stack(batch).numpy()))
            batch = []
    return np.concatenate(out).astype(np.float32)


def write_gallery(folder: Path, ids: list[str], vectors: np.ndarray, model_sha256: str, model_file: str,
                  precision: str) -> dict:
    """Write the embeddings, scales and gallery.json into ``folder`` (thumbs/ already there); returns the JSON."""
    values, scales = quantize_rows(vectors, precision)
    name = "embeddings.i8" if precision == "int8" else "embeddings.f16"
    values.tofile(folder / name)
    if scales is not None:
        scales.tofile(folder / "scales.f32")
    meta = {"format": GALLERY_FORMAT, "model_file": model_file, "model_sha256": model_sha256,
            "embed_dim": int(vectors.shape[1]), "count": len(ids), "precision": precision, "embeddings": name,
            "scales": "scales.f32" if scales is not None else None, "ids": ids,
            "thumbnails": [f"thumbs/{i:06d}.jpg" for i in range(len(ids))], "thumbnail_size": THUMBNAIL_SIZE}
    write_json(folder / "gallery.json", meta)
    return meta


def read_gallery(folder: str | Path, model_sha256: str | None = None, embed_dim: int | None = None) -> dict:
    """Read and validate a gallery/ folder (the Kotlin reader's rules); returns its gallery.json plus
    ``vectors``: the dequantised, L2-normalised float32 [N, D] rows."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "gallery.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}/gallery.json cannot be read: {error}") from None
    if not isinstance(meta, dict) or set(meta) != set(GALLERY_FIELDS):
        raise DataError(f"{folder}/gallery.json must hold exactly the fields {', '.join(GALLERY_FIELDS)}")
    if meta["format"] != GALLERY_FORMAT or meta["precision"] not in GALLERY_PRECISIONS:
        raise DataError(f"{folder}/gallery.json: unsupported format {meta['format']!r} / precision "
                        f"{meta['precision']!r}")
    n, dim = meta["count"], meta["embed_dim"]
    if not (isinstance(n, int) and n >= 1 and isinstance(dim, int) and dim >= 1):
        raise DataError(f"{folder}/gallery.json: count and embed_dim must be positive integers")
    if len(meta["ids"]) != n or len(meta["thumbnails"]) != n:
        raise DataError(f"{folder}/gallery.json: {len(meta['ids'])} ids and {len(meta['thumbnails'])} thumbnails "
                        f"for count {n}")
    if model_sha256 is not None and meta["model_sha256"] != model_sha256:
        raise DataError(f"{folder}: the gallery was made by another model (sha256 {meta['model_sha256'][:12]}..., "
                        f"the model is {model_sha256[:12]}...)")
    if embed_dim is not None and dim != embed_dim:
        raise DataError(f"{folder}: the gallery holds {dim}-d vectors, the model makes {embed_dim}-d ones")
    int8 = meta["precision"] == "int8"
    values = _read_array(folder / meta["embeddings"], np.int8 if int8 else np.dtype("<f2"), n * dim)
    scales = _read_array(folder / meta["scales"], np.dtype("<f4"), n) if int8 else None
    return {**meta, "vectors": dequantize_rows(values.reshape(n, dim), scales)}


def _read_array(path: Path, dtype, count: int) -> np.ndarray:
    data = np.fromfile(path, dtype=dtype) if path.is_file() else None
    if data is None or data.size != count:
        raise DataError(f"{path}: expected {count} values of {np.dtype(dtype).name}, "
                        f"found {'no file' if data is None else data.size}")
    return data


def search_gallery(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Exact cosine top-k of L2-normalised ``queries`` over ``vectors`` (float64 scores; ties by row order)."""
    q = np.asarray(queries, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.tolist(), np.take_along_axis(scores, order, axis=1).tolist()


# ------------------------------------------------------------------------------------------ the folder


def _build(work: Path, model: Path, contract: ModelContract, digest: str, gallery, precision: str, threads: int,
           progress: bool) -> dict | None:
    shutil.copyfile(model, work / "model.tflite")
    if contract.model_file == "model.tflite" and contract.model_sha256 == digest:
        shutil.copyfile(model.parent / "model.json", work / "model.json")  # as exported, byte for byte
    else:  # the app opens assets/model.tflite and checks the gallery against model_sha256
        write_json(work / "model.json", replace(contract, model_file="model.tflite", model_sha256=digest).to_dict())
    data = json.loads((work / "model.json").read_text())
    if gallery is None:
        return None
    images = _open_gallery(gallery)
    folder = work / "gallery"
    (folder / "thumbs").mkdir(parents=True)
    vectors = embed_gallery(images, work / "model.tflite", ModelContract.from_dict(data), folder / "thumbs",
                            threads, progress)
    ids = [str(key).replace("\\", "/") for key in images.keys]
    return write_gallery(folder, ids, vectors, digest, "model.tflite", precision)


def write_android_folder(model_dir, dest, *, gallery=None, gallery_precision="int8", threads=1,
                         progress=True) -> dict:
    """Write ``dest``: model.tflite + model.json of the export folder ``model_dir`` and, with ``gallery`` (a
    folder of photos), gallery/ with their embeddings made by that .tflite file (int8 or fp16), ids and
    thumbnails. Built in a temporary folder beside ``dest`` and renamed onto it; a ``dest`` holding files this
    tool did not write is refused. Returns {dest, files, bytes, model_sha256, gallery_count, precision}."""
    if gallery_precision not in GALLERY_PRECISIONS:
        raise MobileKDError(f"gallery precision must be one of {', '.join(GALLERY_PRECISIONS)}, "
                            f"got {gallery_precision!r}")
    if not isinstance(threads, int) or threads < 1:
        raise MobileKDError(f"threads must be a positive integer, got {threads!r}")
    model, contract, digest = read_export(model_dir)
    dest = Path(dest).expanduser()
    check_replaceable(dest, MARKER, TOOL, "--out")
    check_writable_dir(dest.parent, f"--out {dest}: its folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        meta = _build(work, model, contract, digest, gallery, gallery_precision, threads, progress)
        files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        size = sum((work / f).stat().st_size for f in files)
        mark_owned(work, MARKER, TOOL)
        check_replaceable(dest, MARKER, TOOL, "--out")
        replace_folder(work, dest)
    except OSError as error:
        raise MobileKDError(f"cannot write {dest}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"dest": str(dest), "files": files, "bytes": size, "model_sha256": digest,
            "gallery_count": meta["count"] if meta else 0, "precision": meta["precision"] if meta else None}


# ------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    from export.common import ExportArgumentParser

    parser = ExportArgumentParser(
        prog="python -m export.android",
        description="Write the android/ folder the demo app reads from app/src/main/assets/ (model.tflite, "
                    "model.json, and with --gallery the photos' embeddings for on-device search).")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="an export folder of python -m export.tflite")
    parser.add_argument("--out", required=True, help="the android/ folder to write (new, or one this tool wrote)")
    parser.add_argument("--gallery", help="a folder of photos to embed and ship as gallery/")
    parser.add_argument("--gallery-precision", default="int8", choices=GALLERY_PRECISIONS,
                        help="how the gallery's embeddings are stored (default: int8, one scale per row)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads for embedding the gallery")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = write_android_folder(args.model_dir, args.out, gallery=args.gallery,
                                   gallery_precision=args.gallery_precision, threads=args.threads,
                                   progress=not args.no_progress)
    gallery = (f", gallery of {summary['gallery_count']} photos ({summary['precision']})"
               if summary["gallery_count"] else "")
    print(f"wrote {summary['dest']}: {len(summary['files'])} files, {summary['bytes']} bytes{gallery}")
    print(f"integrate: cp -r {summary['dest']}/. android_demo/app/src/main/assets/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

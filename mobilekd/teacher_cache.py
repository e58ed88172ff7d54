"""Teacher-embedding cache: run the big teacher once, train the tiny student many times.

A cache folder holds

* ``embeddings.npy`` -- float32 [N images, V views, D], memory-mapped when read (``np.load(mmap_mode="r")``);
* ``manifest.json``  -- what the numbers are: the teacher (description + sha256 of its weights or file), the
  transform (its preprocessing and the view sampler: seed, crop scale, ratio, flip), the number of views,
  the data set (path, layout, split, and a fingerprint of its image keys, labels and file sizes), and how
  many images are done.

View v of image i is the view ``ViewSampler(seed, ...)(W, H, i, v)`` -- the student renders the identical
view at its own resolution, so its targets are consistent with what it sees. Building is resumable: images
are embedded in chunks, each leaving a marker file once its rows are on disk, so a killed build continues
where it stopped (and under torchrun the ranks share the chunks). ``TeacherCache.open(path, expected)`` refuses a cache whose teacher, transform, views or data
differ from the run's, naming the fields, and a damaged one (unreadable manifest, missing chunks, an
``embeddings.npy`` of another shape or dtype); non-finite rows are refused when their chunk is first read.
``TeacherCache.build`` over a cache of other data either starts over (``stale="rebuild"``, a run's own cache)
or refuses (``stale="refuse"``: ``python -m mobilekd.embed`` without ``--rebuild``).

Hint and attention losses need the teacher's feature maps, which are not cached: they keep the live teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mobilekd.data.embeddings_npz import PrecomputedEmbeddings
from mobilekd.data.image_sets import ImageSet
from mobilekd.data.view_dataset import ViewDataset
from mobilekd.distributed import Context
from mobilekd.errors import MobileKDError, loader_reason
from mobilekd.inference import embed_views
from mobilekd.io import sha256_file, write_json

FORMAT = "mobilekd-teacher-cache/1"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
# fields that must agree between a cache and the run that reads it
IDENTITY_FIELDS = ("teacher_sha256", "transform", "views", "data_fingerprint")


def teacher_identity(teacher) -> tuple[str, str]:
    """(human-readable description, sha256 of the weights or file) of a teacher."""
    digest = hashlib.sha256()
    if isinstance(teacher, torch.nn.Module):  # EmbeddingNet or a MasterEnsemble of them
        for key, value in teacher.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        specs = teacher.spec if isinstance(teacher.spec, list) else [teacher.spec]
        return json.dumps([spec.to_dict() for spec in specs], sort_keys=True), digest.hexdigest()
    path = Path(teacher.path)
    return str(path), sha256_file(path)


def data_fingerprint(images: ImageSet) -> str:
    """sha256 of the image keys, labels and file sizes (changes when files are added, removed or replaced)."""
    import zipfile

    digest = hashlib.sha256()
    zip_sizes: dict[str, dict[str, int]] = {}
    for index, (key, label) in enumerate(zip(images.keys, images.labels.tolist())):
        source = images.source_of(index)
        if source.is_zip:
            if source.root not in zip_sizes:
                with zipfile.ZipFile(source.root) as archive:
                    zip_sizes[source.root] = {info.filename: info.file_size for info in archive.infolist()}
            size = zip_sizes[source.root].get(key, -1)
        else:
            size = _file_size(os.path.join(source.root, key))
        # surrogateescape: a file name that is not UTF-8 counts as its own bytes (the same digest for UTF-8 names)
        digest.update(f"{os.path.basename(source.root)}\t{key}\t{label}\t{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def check_free_space(file: Path, data_bytes: int) -> None:
    """Refuse a memory-mapped file the disk cannot hold: writing rows into a sparse file past the free space
    kills the process with SIGBUS ("Bus error", exit 135) and no message, instead of this one error."""
    needed = data_bytes + 4096  # the .npy header
    existing = file.parent
    while not existing.exists() and existing != existing.parent:  # the cache folder may not exist yet
        existing = existing.parent
    free = shutil.disk_usage(existing).free + (file.stat().st_size if file.is_file() else 0)  # a stale file goes
    if needed > free:
        raise MobileKDError(f"teacher cache {file} needs {needed:,} bytes but only {free:,} bytes are free on its "
                            "disk: free some space or put --teacher-cache elsewhere")


def expected_manifest(teacher, dataset: ViewDataset, views: int, data: dict) -> dict:
    description, sha = teacher_identity(teacher)
    sampler = dataset.views
    transform = {"preprocess": teacher.preprocess.to_dict() if teacher.preprocess is not None else None,
                 "view_sampler": {"seed": sampler.seed, "scale": list(sampler.scale), "ratio": list(sampler.ratio),
                                  "flip": sampler.flip, "eval_crop": sampler.eval_crop}}
    return {"format": FORMAT, "teacher": description, "teacher_sha256": sha, "transform": transform,
            "views": int(views), "data": data, "data_fingerprint": data_fingerprint(dataset.images),
            "images": len(dataset.images), "embed_dim": getattr(teacher, "embed_dim", None)}


def _mismatch(manifest: dict, expected: dict) -> list[str]:
    return [name for name in IDENTITY_FIELDS if json.dumps(manifest.get(name), sort_keys=True)
            != json.dumps(expected.get(name), sort_keys=True)]


def _differences(old, new, where: str) -> list[str]:
    """``field old -> new`` for every leaf that differs between two JSON values (hashes shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{where}.{key}")]
    if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return []
    short = [v[:12] + "..." if isinstance(v, str) and len(v) == 64 else v for v in (old, new)]
    return [f"{where} {json.dumps(short[0])} -> {json.dumps(short[1])}"]


def describe_mismatch(manifest: dict, expected: dict) -> str:
    """What differs between a cache's manifest and this run, field by field (the cache's value first)."""
    fields = [d for name in _mismatch(manifest, expected)
              for d in _differences(manifest.get(name), expected.get(name), name)]
    return "; ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")


def read_manifest(path: Path) -> dict:
    """``path/manifest.json`` checked for the fields every reader relies on (one MobileKDError otherwise)."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise MobileKDError(f"teacher cache {path}: cannot read {MANIFEST} ({error})") from None
    if not isinstance(manifest, dict):
        raise MobileKDError(f"teacher cache {path}: {MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise MobileKDError(f"{manifest_path}: unknown cache format {manifest.get('format')!r}")
    shape = manifest.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise MobileKDError(f"teacher cache {path}: {MANIFEST} shape must be [images, views, dims], got {shape!r}")
    chunk = manifest.get("chunk", 1)
    if not (isinstance(chunk, int) and chunk > 0) or not isinstance(manifest.get("complete", False), bool):
        raise MobileKDError(f"teacher cache {path}: {MANIFEST} has a bad chunk ({chunk!r}) or complete field")
    return manifest


def load_embeddings(path: Path, manifest: dict) -> np.ndarray:
    """``embeddings.npy`` memory-mapped, checked against the manifest's shape and float32 (reads no rows)."""
    try:
        embeddings = np.load(path / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # truncated file, bad header, object dtype
        raise MobileKDError(f"teacher cache {path}: cannot read {EMBEDDINGS} ({loader_reason(error)}); rebuild "
                            "the cache") from None
    if embeddings.dtype != np.float32 or list(embeddings.shape) != manifest["shape"]:
        raise MobileKDError(f"teacher cache {path}: {EMBEDDINGS} is {embeddings.dtype} {list(embeddings.shape)}, "
                            f"{MANIFEST} says float32 shape {manifest['shape']}; rebuild the cache")
    return embeddings


def missing_chunks(path: Path, manifest: dict) -> list[int]:
    """Start indices of the chunks a chunked build has no marker for."""
    if "chunk" not in manifest:  # written in one piece (precomputed embeddings)
        return []
    return [s for s in range(0, manifest["shape"][0], manifest["chunk"]) if not (path / "chunks" / str(s)).exists()]


class TeacherCache:
    """``cache(index, view)`` -> teacher embeddings (torch, float32) of those views."""

    def __init__(self, path: Path, embeddings: np.ndarray, manifest: dict):
        self.path, self.embeddings, self.manifest = Path(path), embeddings, manifest
        self.block = int(manifest.get("chunk", 256))  # rows checked for NaN/inf together, on first use
        self._finite: set[int] = set()

    @property
    def num_views(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[2])

    def __call__(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        index = np.asarray(index)
        for block in set((index // self.block).tolist()) - self._finite:
            self._check_finite(block)
        rows = self.embeddings[index, np.asarray(view)]
        return torch.from_numpy(np.array(rows, dtype=np.float32))

    def _check_finite(self, block: int) -> None:
        """Refuse a chunk holding NaN/inf (a damaged file): training on it would silently give NaN losses."""
        start = block * self.block
        rows = np.asarray(self.embeddings[start:start + self.block])
        finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
        if not finite.all():
            bad = (np.flatnonzero(~finite) + start).tolist()
            raise MobileKDError(f"teacher cache {self.path}: non-finite values (NaN/inf) in the rows of image(s) "
                                f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; the cache is damaged: rebuild it "
                                "(python -m mobilekd.embed ... --rebuild)")
        self._finite.add(block)

    @classmethod
    def open(cls, path: str | os.PathLike, expected: dict | None = None) -> "TeacherCache":
        """The cache at ``path``, checked cheaply (manifest, chunk markers, the file's shape and dtype; rows
        are checked for NaN/inf as they are read) and, given ``expected``, against this run."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file() or not (path / EMBEDDINGS).is_file():
            raise MobileKDError(f"{path} is not a teacher-embedding cache (needs {MANIFEST} and {EMBEDDINGS})")
        manifest = read_manifest(path)
        images, views, dim = manifest["shape"]
        if manifest.get("images", images) != images or manifest.get("views", views) != views:
            raise MobileKDError(f"teacher cache {path}: {MANIFEST} says {manifest.get('images')} images x "
                                f"{manifest.get('views')} views but shape {manifest['shape']}; rebuild the cache")
        missing = missing_chunks(path, manifest)
        if not manifest.get("complete"):
            chunks = len(list((path / "chunks").glob("*"))) if (path / "chunks").is_dir() else 0
            raise MobileKDError(f"teacher cache {path} is incomplete ({chunks} chunks of {manifest.get('chunk')} "
                                f"images done of {images}): run the same `python -m mobilekd.embed` command again "
                                "to finish it")
        if missing:
            raise MobileKDError(f"teacher cache {path}: {MANIFEST} says complete but the chunk(s) starting at image "
                                f"{missing[:5]} were never written ({len(missing)} missing); rebuild it "
                                "(python -m mobilekd.embed ... --rebuild)")
        if expected is not None:
            different = _mismatch(manifest, expected)
            if different:
                raise MobileKDError(f"teacher cache {path} does not match this run: different "
                                    f"{', '.join(different)} (it was built with {manifest.get('views')} views of "
                                    f"{manifest.get('images')} images); rebuild it or drop --teacher-cache")
            if expected.get("embed_dim") and expected["embed_dim"] != dim:
                raise MobileKDError(f"teacher cache {path} holds {dim}-d embeddings but the teacher embeds to "
                                    f"{expected['embed_dim']}; rebuild it or drop --teacher-cache")
        return cls(path, load_embeddings(path, manifest), manifest)

    @classmethod
    def build(cls, path: str | os.PathLike, teacher, dataset: ViewDataset, views: int, data: dict,
              device: str = "cpu", chunk: int = 256, progress: bool = True, context: Context = Context(),
              stale: str = "rebuild", restart: bool = False) -> "TeacherCache":
        """Embed views 0..V-1 of every image (resuming a partial build) and return the opened cache.

        Under torchrun every rank embeds its share of the chunks (chunk i goes to rank i mod world); a
        finished chunk leaves a marker file, so a killed build -- single or multi-process -- continues.
        A cache of another teacher, transform, views or data (or an unreadable manifest) is started over when
        ``stale`` is "rebuild" and refused, naming what differs, when it is "refuse"; ``restart`` starts over
        whatever is there."""
        path = Path(path)
        expected = expected_manifest(teacher, dataset, views, data)
        manifest_path, chunks_dir = path / MANIFEST, path / "chunks"
        if context.is_main:
            manifest = cls._reusable_manifest(path, expected, stale, restart)
            if manifest is None and manifest_path.is_file():  # start over
                shutil.rmtree(chunks_dir, ignore_errors=True)
            if manifest is None or not (path / EMBEDDINGS).is_file():
                if not isinstance(teacher, PrecomputedEmbeddings):  # before anything is created
                    check_free_space(path / EMBEDDINGS, len(dataset) * int(views) * int(teacher.embed_dim) * 4)
                path.mkdir(parents=True, exist_ok=True)
                chunks_dir.mkdir(exist_ok=True)
                if isinstance(teacher, PrecomputedEmbeddings):
                    if views != 1:
                        raise MobileKDError("precomputed teacher embeddings exist for one view per image: use --views 1")
                    embeddings = teacher.lookup(dataset.images.keys)[:, None, :].numpy()
                    np.save(path / EMBEDDINGS, embeddings)
                    write_json(manifest_path, {**expected, "shape": list(embeddings.shape), "dtype": "float32",
                                               "complete": True})
                else:
                    shape = (len(dataset), int(views), int(teacher.embed_dim))
                    np.lib.format.open_memmap(path / EMBEDDINGS, mode="w+", dtype=np.float32, shape=shape).flush()
                    write_json(manifest_path, {**expected, "shape": list(shape), "dtype": "float32",
                                               "chunk": chunk, "complete": False})
        context.barrier()
        manifest = json.loads(manifest_path.read_text())
        if not manifest.get("complete"):
            chunk = int(manifest["chunk"])
            if isinstance(teacher, torch.nn.Module):
                teacher.to(device)
            store = np.load(path / EMBEDDINGS, mmap_mode="r+")
            starts = [s for i, s in enumerate(range(0, len(dataset), chunk)) if i % context.world == context.rank]
            todo = [s for s in starts if not (chunks_dir / str(s)).exists()]
            bar = tqdm(total=len(todo), desc=f"teacher cache ({views} views x {len(dataset)} images, chunks)",
                       disable=not progress or not context.is_main, leave=False)
            for start in todo:
                stop = min(start + chunk, len(dataset))
                keys = [(i, v) for i in range(start, stop) for v in range(views)]
                flat = embed_views(teacher, dataset, keys, "teacher", device, progress=False)
                store[start:stop] = flat.reshape(stop - start, views, -1).numpy()
                store.flush()
                (chunks_dir / str(start)).touch()  # only after the rows are on disk
                bar.update(1)
            bar.close()
            del store
            context.barrier()
            if context.is_main:
                write_json(manifest_path, {**manifest, "complete": True})
            context.barrier()
        return cls.open(path, expected)

    @staticmethod
    def _reusable_manifest(path: Path, expected: dict, stale: str, restart: bool) -> dict | None:
        """The manifest of a cache at ``path`` this build may continue; None to start over (nothing there,
        ``restart``, or stale with ``stale="rebuild"``); MobileKDError naming the differences otherwise."""
        if restart or not (path / MANIFEST).is_file():
            return None
        try:
            manifest = read_manifest(path)
            differences = describe_mismatch(manifest, expected)
            missing = missing_chunks(path, manifest) if manifest.get("complete") else []
            if missing and not differences:
                differences = f"says complete but {len(missing)} chunk(s) were never written"
        except MobileKDError as error:
            manifest, differences = None, str(error)
        if not differences:
            return manifest
        if stale != "rebuild":
            raise MobileKDError(f"teacher cache {path} does not fit this run ({differences}); pass --rebuild to "
                                "replace it, or choose another --teacher-cache folder")
        return None

"""Embed an image set with any model: an EmbeddingNet, an ONNX black box, or precomputed embeddings."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mobilekd.blackbox import PrecomputedEmbeddings
from mobilekd.data.dataset import ViewDataset
from mobilekd.data.datasets import ImageSet


@torch.inference_mode()
def embed_views(model, dataset: ViewDataset, keys: list, input_name: str, device: str = "cpu",
                batch_size: int = 64, desc: str = "embed", progress: bool = True, num_workers: int = 0) -> torch.Tensor:
    """Embeddings of the given ``(index, view)`` keys, rendered for ``input_name``, in key order."""
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
    batches = DataLoader(torch.utils.data.Subset(dataset, keys), batch_size=batch_size,
                         num_workers=num_workers)
    out = []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        pixels = batch[input_name].to(device, non_blocking=True)
        out.append(model(pixels).float().cpu())
    if isinstance(model, torch.nn.Module) and was_training:
        model.train()
    return torch.cat(out) if out else torch.empty(0)


def embed_image_set(model, images: ImageSet, device: str = "cpu", batch_size: int = 64, progress: bool = True,
                    preload_side: int = 0, desc: str | None = None,
                    decoded: ViewDataset | None = None) -> np.ndarray:
    """Embeddings of every image's evaluation view (``mobilekd.data.views.evaluation_view`` of the model's own
    preprocess: the view export parity and the phone use), float32 [N, D]. ``decoded``: a ViewDataset of
    ``images`` whose decoded-image cache is reused (repeated evaluations decode the images once)."""
    if isinstance(model, PrecomputedEmbeddings):
        return model.lookup(images.keys).numpy()
    if decoded is not None:
        dataset = decoded.with_inputs({"x": model.preprocess}, evaluation=True)
    else:
        dataset = ViewDataset(images, {"x": model.preprocess}, preload_side=preload_side, progress=progress,
                              evaluation=True)
    keys = [(i, 0) for i in range(len(images))]
    if isinstance(model, torch.nn.Module):
        model.to(device)
    return embed_views(model, dataset, keys, "x", device, batch_size, desc or f"embed {images.name}",
                       progress).numpy()


def main(argv=None) -> int:
    """``python -m mobilekd.embed``: build a teacher-embedding cache for later distillation runs.

    Takes the distillation flags that decide the targets (--data, --teacher, --teacher-size, --views, --seed,
    --crop-scale, --flip) and writes the cache to --teacher-cache DIR; pass the same DIR to
    ``python -m mobilekd.distill --teacher-cache DIR``. Re-running a killed build continues it; a DIR holding a
    cache of other data, teacher or transform is refused, naming what differs, unless --rebuild is given
    (--rebuild also starts a damaged cache over).
    """
    import argparse
    from pathlib import Path

    from mobilekd.cache import TeacherCache
    from mobilekd.data.dataset import check_readable
    from mobilekd.io import check_writable_dir, lock_folder
    from mobilekd.config import Config
    from mobilekd.data.datasets import load_image_set
    from mobilekd.errors import MobileKDError, cli_entry
    from mobilekd.teachers import resolve_teacher
    from mobilekd.threads import set_threads

    @cli_entry
    def run(argv) -> int:
        # --rebuild is this command's own flag, not a Config field: taken off before Config parses the rest
        own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        own.add_argument("--rebuild", action="store_true")
        args, rest = own.parse_known_args(argv)
        description = (main.__doc__.split("\n\n")[0] + " --rebuild: replace a cache built for other data, teacher or "
                       "transform (refused otherwise), or a damaged one.")
        config = Config.from_args(rest, "python -m mobilekd.embed", description, overrides={"absolute_weight": 1.0})
        if not config.teacher_cache:
            raise MobileKDError("--teacher-cache DIR (where to write the cache) is required")
        if config.effective_views == 0:
            raise MobileKDError("--views 0 means a live teacher: nothing to cache")
        lock_folder(check_writable_dir(config.teacher_cache, "--teacher-cache"))  # one builder per cache
        images = load_image_set(config.data, "train", config.layout, config.train_fraction)
        dataset = ViewDataset(images, {}, config.view_sampler(), preload_side=config.preload,
                              progress=config.progress)
        dataset = check_readable({"train": dataset}, Path(config.teacher_cache) / "unreadable_images.txt",
                                 config.skip_bad_images, config.progress)[0]["train"]
        images = dataset.images
        threads = set_threads(config.threads)  # 0: the idle cores
        teacher = resolve_teacher(config.teacher, config.teacher_size, threads)
        dataset = dataset.with_inputs({"teacher": teacher.preprocess} if teacher.preprocess is not None else {})
        cache = TeacherCache.build(config.teacher_cache, teacher, dataset, config.effective_views,
                                   config.data_identity("train"), config.device, progress=config.progress,
                                   stale="rebuild" if args.rebuild else "refuse", restart=args.rebuild)
        print(f"teacher cache: {cache.path} ({len(images)} images x {cache.num_views} views x {cache.embed_dim})")
        return 0

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())

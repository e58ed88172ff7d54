"""``python -m mobilekd.embed``: build a teacher-embedding cache (``mobilekd.teacher_cache``) for distillation."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilekd.config import Config
from mobilekd.data.image_sets import load_image_set
from mobilekd.data.training import data_identity, view_sampler
from mobilekd.data.view_dataset import ViewDataset, check_readable
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_writable_dir, lock_folder
from mobilekd.models.resolve import resolve_teacher
from mobilekd.teacher_cache import TeacherCache
from mobilekd.threads import set_threads


def main(argv=None) -> int:
    """``python -m mobilekd.embed``: build a teacher-embedding cache for later distillation runs.

    Takes the distillation flags that decide the targets (--data, --teacher, --teacher-size, --views, --seed,
    --crop-scale, --flip) and writes the cache to --teacher-cache DIR; pass the same DIR to
    ``python -m mobilekd.distill --teacher-cache DIR``. Re-running a killed build continues it; a DIR holding a
    cache of other data, teacher or transform is refused, naming what differs, unless --rebuild is given
    (--rebuild also starts a damaged cache over).
    """

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
        dataset = ViewDataset(images, {}, view_sampler(config), preload_side=config.preload,
                              progress=config.progress)
        dataset = check_readable({"train": dataset}, Path(config.teacher_cache) / "unreadable_images.txt",
                                 config.skip_bad_images, config.progress)[0]["train"]
        images = dataset.images
        threads = set_threads(config.threads)  # 0: the idle cores
        teacher = resolve_teacher(config.teacher, config.teacher_size, threads)
        dataset = dataset.with_inputs({"teacher": teacher.preprocess} if teacher.preprocess is not None else {})
        cache = TeacherCache.build(config.teacher_cache, teacher, dataset, config.effective_views,
                                   data_identity(config, "train"), config.device, progress=config.progress,
                                   stale="rebuild" if args.rebuild else "refuse", restart=args.rebuild)
        print(f"teacher cache: {cache.path} ({len(images)} images x {cache.num_views} views x {cache.embed_dim})")
        return 0

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())

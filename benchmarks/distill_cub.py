"""The seed's experiment on real data: which distillation method helps a MobileNet-0.25 most on CUB-100?

    python -m benchmarks.distill_cub --data ../shared/data/cub100-227 --out runs/cub-kd \\
        [--student-init imagenet|random] [--student-size 128] [--epochs 90] [--seeds 0,1,2] \\
        [--teacher efficientnet_lite2] [--teacher-size 224] [--arms alone,absolute,...] \\
        [--set kl_temperature=0.05 ...] [--unlabeled-limit 4000]

Classes 0-49 train, 50-99 test (leave-one-out retrieval). Teacher: EfficientNet-Lite2 with ImageNet weights
(pooled 1280-d features). Every arm trains the same MobileNetV1-0.25 student (same seed, views, schedule),
initialised by ``--student-init``: ``imagenet`` (default: the shipped ImageNet weights, ``mobilenetv1_025
--pretrained``, BatchNorm unfolded by the Trainer; pooled 256-d features, lr 5e-4) or ``random`` (from
scratch; 128-d head, lr 2e-3). ``--embed-dim`` and ``--lr`` override those defaults for every arm.

  zero_shot          no training: the student's features through the Trainer's own evaluation
  alone              metric loss only (normalised softmax)    absolute     + absolute teacher loss
  relative           + relative teacher loss                  absolute_relative  + both (the seed's combination)
  rkd                + RKD distance and angle                 kl           + distance-distribution KL
  kl_label_free      distance-distribution KL only, no labels (``metric_loss none``, weight 1, tau 0.1)
  hint_at            + hint and attention (live teacher)
  semi               + absolute, also on ``--unlabeled-data`` (ImageNet photos: inductive, no test image)
  semi_transductive  + absolute, also on DATA/images without labels: the CUB test images are among them
                     (transductive: not comparable with the other arms; the seed's unlabeled birds are not
                     available offline)
  lowres             + absolute, the student sees the image down-sampled to 32 px (cross-quality)
  init_random / init_selection / init_imagenet   the initialisation ablation, each ``alone``: from scratch /
                     weight selection (``tf_mobilenetv1_025 --init-from`` Google's ImageNet MobileNetV1-0.5/160,
                     imported once into OUT/imports) / the shipped ImageNet weights
  init_imagenet_pretrain  two stages: label-free KL distillation (``kl_label_free``) on the CUB training images
                     *and* the unlabeled photos (the engine trains on --data's train split; no labels are used,
                     no test image is seen), then ``alone`` from that checkpoint
  init_random_pretrain / init_selection_pretrain   the same two stages from a random / weight-selected student

``--set KEY=VALUE`` (repeatable) applies a Config option to every arm: a recipe variant, in its own run folder
(``.../<init>_<arm>+KEY=VALUE``) and row, sharing the seed's teacher cache -- how the recipe search of issue 15
was run (``benchmarks/results/recipe_cub128/README.md``).

Run folders: ``OUT/seed<S>/<size>px/<init>_<arm>`` (the ablation arms: ``.../<arm>``). The teacher targets of
every cached arm come from one teacher-embedding cache per seed (``OUT/seed<S>/teacher_cache``; ``semi`` and the
pre-training stage share ``teacher_cache_unlabeled``) of ``--views`` views per image. Arms resume after a kill
(re-run the same command); finished arms are reused, and arms of identical options (``alone`` and
``init_imagenet`` on ImageNet students) run once. Missing input folders stop the run before any training. The table (R@1/2/4/8, MAP@R for the teacher and each arm,
the fraction of the student->teacher R@1 gap closed) goes to ``--results`` ``.md`` / ``.json`` (default
``OUT/distill_cub``, in the run folder) with the command and the machine, titled with ``--title`` (default: the
name of ``--data``'s folder). JSON: ``command``, ``machine``, ``args`` (``student_size`` ...), ``rows`` (name ->
metrics; with several ``--seeds``, the mean over seeds), ``costs`` (name -> {seed: cpu_minutes, wall_minutes} of
the arm's run; none for an arm reused from an earlier run) and ``cache_costs`` (seed -> the same for building
the teacher caches its arms use, also when an earlier run built them: ``build_cost.json`` in the cache folder
records it), and with several seeds
``sd`` (name -> the standard deviation of each metric over seeds) and ``seeds`` (name -> {seed: metrics}).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks import command_line, comma_choices, publish
from mobilekd.config import Config
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import write_json
from mobilekd.metrics import format_table

CACHE_COST_FILE = "build_cost.json"  # what building a teacher cache cost, for the rows of later runs that reuse it

# Weights: the normalised-softmax metric loss has gradients tens of times larger than a teacher loss at
# weight 1 (measured on Omniglot with the former from-scratch demo recipe: 32 px, random init; weight 1 and 10
# gained less, 100 over-regularised), so the absolute and KL losses get weight 30 / 10.
# The label-free KL arm is the best measured on an ImageNet student (issue 15 section 4: R@1 61.94 vs 54.49
# zero-shot at 128 px).
KL_LABEL_FREE = {"metric_loss": "none", "kl_weight": 1.0, "kl_temperature": 0.1}
TEST_IMAGES, UNLABELED = "TEST_IMAGES", "UNLABELED"  # placeholders, resolved from the options in arm_config
ARMS = {
    "zero_shot": {},
    "alone": {},
    "absolute": {"absolute_weight": 30.0},
    "relative": {"relative_weight": 0.3},
    "absolute_relative": {"absolute_weight": 30.0, "relative_weight": 0.3},
    "rkd": {"rkd_distance_weight": 1.0, "rkd_angle_weight": 2.0},
    "kl": {"kl_weight": 10.0},
    "kl_label_free": KL_LABEL_FREE,
    "hint_at": {"absolute_weight": 30.0, "hint_weight": 1.0, "attention_weight": 100.0},
    "semi": {"absolute_weight": 30.0, "unlabeled": UNLABELED},
    "semi_transductive": {"absolute_weight": 30.0, "unlabeled": TEST_IMAGES},
    "lowres": {"absolute_weight": 30.0, "lowres": 32},
    "init_random": {"init": "random"},
    "init_selection": {"init": "selection"},
    "init_imagenet": {"init": "imagenet"},
    "init_imagenet_pretrain": {"init": "imagenet", "pretrain": True},
    "init_random_pretrain": {"init": "random", "pretrain": True},
    "init_selection_pretrain": {"init": "selection", "pretrain": True},
}
INITS = {"imagenet": "ImageNet", "random": "random init", "selection": "weight selection from 0.5"}
LIVE_TEACHER = ("hint_at",)  # feature-map losses need the live teacher, not a cache
SELECTION_ARCH = "mobilenetv1_050"  # the larger network of the weight-selection arm (TF padding: tf_ student)


def init_options(args, init: str) -> dict:
    """The student options of one initialisation; embedding size and lr default per init (a pretrained backbone
    keeps its pooled features and a small lr, a random one gets the seed's 128-d head and 2e-3)."""
    pretrained = init != "random"
    options = {"imagenet": {"student": "mobilenetv1_025", "pretrained": True},
               "random": {"student": "mobilenetv1_025"},
               "selection": {"student": "tf_mobilenetv1_025", "init_from": str(selection_source(args))}}[init]
    return {**options, "embed_dim": args.embed_dim if args.embed_dim is not None else (0 if pretrained else 128),
            "lr": args.lr if args.lr is not None else (5e-4 if pretrained else 2e-3)}


def selection_source(args) -> Path:
    """Where the weight-selection arm's larger ImageNet network is imported to (once, see ``import_selection``)."""
    return Path(args.out) / "imports" / f"{SELECTION_ARCH}_{Path(args.selection_weights).stem}"


def seed_root(args, seed: int) -> Path:
    return Path(args.out) / f"seed{seed}"


def parse_overrides(args) -> dict:
    """``--set KEY=VALUE`` (repeatable): Config options applied to every arm, typed as the Config field."""
    from mobilekd.config import coerce

    hints = Config.key_types()
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise MobileKDError(f"--set expects KEY=VALUE with a Config option as KEY, got {item!r}")
        overrides[key] = coerce(key, value.strip(), hints[key])
    return overrides


def overrides_suffix(args) -> str:
    """The ``--set`` options as a folder/row suffix, so a recipe variant never reuses another variant's run."""
    return "".join(f"+{key}={value}" for key, value in sorted(parse_overrides(args).items()))


def arm_folder(args, arm: str, seed: int) -> Path:
    name = arm if arm.startswith("init_") else f"{args.student_init}_{arm}"
    return seed_root(args, seed) / f"{args.student_size}px" / (name + overrides_suffix(args))


def arm_init(args, arm: str) -> str:
    return ARMS[arm].get("init", args.student_init)


def arm_config(args, arm: str, seed: int | None = None) -> Config:
    """The Config of ``arm`` for ``seed`` (default: the first of ``--seeds``); for ``init_imagenet_pretrain`` the
    fine-tuning stage (its first stage: ``pretrain_config``)."""
    if arm not in ARMS:
        raise MobileKDError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    seed = parse_seeds(args)[0] if seed is None else seed
    extra = {k: v for k, v in ARMS[arm].items() if k not in ("init", "pretrain")}
    if extra.get("unlabeled") == TEST_IMAGES:
        extra["unlabeled"] = str(Path(args.data) / "images")  # all of CUB's images as a plain folder, labels dropped
    elif extra.get("unlabeled") == UNLABELED:
        extra["unlabeled"] = args.unlabeled_data
    student = init_options(args, arm_init(args, arm))
    out = arm_folder(args, arm, seed)
    if ARMS[arm].get("pretrain"):  # stage 2 starts from stage 1's checkpoint (its head included), nothing else
        student = {**student, "student": str(out / "stage1"), "pretrained": False, "init_from": None}
    options = dict(data=args.data, student_size=args.student_size, teacher=args.teacher,
                   teacher_size=args.teacher_size, views=args.views, crop_scale=0.35, epochs=args.epochs,
                   batch_classes=args.batch_classes, images_per_class=args.images_per_class,
                   eval_every=args.eval_every, seed=seed, threads=args.threads, device=args.device, resume=True,
                   progress=not args.quiet, steps_per_epoch=args.steps_per_epoch, unlabeled_limit=args.unlabeled_limit)
    config = Config(**{**options, **student, **extra, **parse_overrides(args), "out": str(out)})
    if config.uses_teacher and arm not in LIVE_TEACHER:
        cache = cache_folder(args, seed, extra.get("unlabeled"))
        config = dataclasses.replace(config, teacher_cache=str(cache) if cache else None)
    return config


def cache_folder(args, seed: int, unlabeled: str | None) -> Path | None:
    """The shared teacher cache of the arms trained on this seed's views of the CUB training images (plus, for
    ``semi`` and the pre-training stage, the unlabeled photos); None: the arm builds its own (transductive)."""
    if unlabeled is None:
        return seed_root(args, seed) / "teacher_cache"
    if unlabeled == args.unlabeled_data:
        return seed_root(args, seed) / "teacher_cache_unlabeled"
    return None


def pretrain_config(args, arm: str = "init_imagenet_pretrain", seed: int | None = None) -> Config:
    """Stage 1 of a ``*_pretrain`` arm: its initialisation (ImageNet, random or weight-selected student)
    distilled label-free (``kl_label_free``) on the CUB training images and ``--unlabeled-data``, for
    ``--pretrain-epochs``."""
    seed = parse_seeds(args)[0] if seed is None else seed
    final = arm_config(args, arm, seed)
    return dataclasses.replace(final, **init_options(args, arm_init(args, arm)), **KL_LABEL_FREE,
                               unlabeled=args.unlabeled_data, epochs=args.pretrain_epochs or args.epochs,
                               out=str(Path(final.out) / "stage1"),
                               teacher_cache=str(cache_folder(args, seed, args.unlabeled_data)))


def parse_seeds(args) -> list[int]:
    try:
        seeds = [int(part) for part in str(args.seeds).split(",") if part.strip()]
    except ValueError:
        raise MobileKDError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise MobileKDError(f"--seeds needs distinct integers, got {args.seeds!r}")
    return seeds


def finished_summary(config: Config) -> dict | None:
    """The metrics of an arm that already finished with these options (so adding an arm does not re-run or
    re-evaluate the others), else None."""
    out = Path(config.out)
    try:
        summary = json.loads((out / "metrics.json").read_text())
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    weights = [k for k in saved if k.endswith("_weight")]
    keys = (*Config.resume_keys(), *weights, "epochs", "lr", "crop_scale", "lowres", "steps_per_epoch",
            "kl_temperature")
    same = all(saved.get(k) == getattr(config, k) for k in keys)
    return summary if same and summary.get("epochs") == config.epochs else None


def zero_shot_metrics(config: Config) -> dict:
    """Test metrics of ``config``'s student before any training (its pooled features: a new head would be
    random) through the Trainer's own evaluation, so the protocol is the trained rows'. BatchNorm unfolding
    leaves the eval-mode function unchanged. Writes ``metrics.json`` and ``config.json`` (for reuse) only."""
    from mobilekd.engine import evaluate_untrained

    summary = {"out": config.out, "test": evaluate_untrained(config), "epochs": config.epochs, "zero_shot": True}
    write_json(Path(config.out) / "config.json", config.to_dict())  # the arm's options, as finished_summary reads them
    write_json(Path(config.out) / "metrics.json", summary)
    return summary


def build_cache(config: Config, cache_dir: Path) -> None:
    """The teacher cache the engine would build for ``config`` (same images, views and transform), built once so
    every arm that shares it opens it with ``--teacher-cache``."""
    from mobilekd.data import ViewDataset
    from mobilekd.data.training import data_identity, training_images, view_sampler
    from mobilekd.models.resolve import resolve_teacher
    from mobilekd.teacher_cache import TeacherCache

    teacher = resolve_teacher(config.teacher, config.teacher_size, config.threads or None)
    dataset = ViewDataset(training_images(config), {"teacher": teacher.preprocess}, view_sampler(config), preload_side=config.preload,
                          progress=config.progress)
    TeacherCache.build(cache_dir, teacher, dataset, config.effective_views, data_identity(config, "train"),
                       config.device, progress=config.progress)


def charged_cache_cost(config: Config, cache: Path) -> dict:
    """Build (or reuse) one teacher cache and return what building it cost: measured when built here, else as
    recorded in ``build_cost.json`` by the run that built it, so a row that reuses another run's cache is still
    charged the teacher pass it needed."""
    with cost_meter() as cost:
        build_cache(config, cache)
    if not (cache / "manifest.json").is_file():  # nothing built to record
        return cost
    manifest = hashlib.sha256((cache / "manifest.json").read_bytes()).hexdigest()  # which cache was built
    try:
        recorded = json.loads((cache / CACHE_COST_FILE).read_text())
    except (OSError, ValueError):
        recorded = {}
    if recorded.get("manifest_sha256") == manifest:
        return {key: recorded[key] for key in ("cpu_minutes", "wall_minutes")}
    write_json(cache / CACHE_COST_FILE, {**cost, "manifest_sha256": manifest})
    return cost


def check_inputs(args, arms: list[str]) -> None:
    """The folders the chosen arms read, checked before hours of training rather than at the arm that needs them."""
    needed = {"--data": args.data}
    if any(ARMS[a].get("unlabeled") == UNLABELED or ARMS[a].get("pretrain") for a in arms):
        needed["--unlabeled-data"] = args.unlabeled_data
    if "semi_transductive" in arms:
        needed["semi_transductive (a CUB layout's images/ folder)"] = str(Path(args.data) / "images")
    missing = [f"{what}: {path}" for what, path in needed.items() if not Path(path).exists()]
    if missing:
        raise MobileKDError("not found: " + "; ".join(missing))


def import_selection(args) -> None:
    """Google's ImageNet MobileNetV1-0.5 (``--selection-weights``) as a mobilekd checkpoint, once: the source of
    the weight-selection arm (``python -m mobilekd.weights import FILE --arch mobilenetv1_050``)."""
    from mobilekd.weights import main as weights_main

    out = selection_source(args)
    if (out / "model.json").is_file():
        return
    if not Path(args.selection_weights).is_file():
        raise MobileKDError(f"--selection-weights file not found: {args.selection_weights}")
    code = weights_main(["import", args.selection_weights, "--arch", SELECTION_ARCH, "--out", str(out),
                         "--threads", str(max(1, args.threads))])
    if code:
        raise MobileKDError(f"importing {args.selection_weights} failed (exit {code})")


def run_arm(args, arm: str, seed: int, teacher_tests=None) -> dict:
    """Train (or, for ``zero_shot``, evaluate) one arm; ``teacher_tests`` (``mobilekd.engine.
    TeacherTestEmbeddings``) shares the frozen teacher's test pass between the arms of this invocation."""
    from mobilekd.engine import train

    config = arm_config(args, arm, seed)
    if ARMS[arm].get("pretrain"):
        stage1 = pretrain_config(args, arm, seed)
        finished = finished_summary(stage1) is not None
        print(f"== {arm} stage 1 (seed {seed}): label-free KL on the training and unlabeled images"
              + (" (finished earlier)" if finished else ""), flush=True)
        if not finished:
            train(stage1, teacher_test_embeddings=teacher_tests)
    summary = finished_summary(config)
    print(f"== {arm} (seed {seed})" + (" (finished earlier: reusing its metrics.json)" if summary else ""), flush=True)
    if summary:
        return summary
    return zero_shot_metrics(config) if arm == "zero_shot" else train(config, teacher_test_embeddings=teacher_tests)


def row_name(args, arm: str) -> str:
    return f"MobileNetV1-0.25 ({INITS[arm_init(args, arm)]}, {args.student_size} px) {arm}{overrides_suffix(args)}"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (also what ``arm_config`` reads: tests and scripts build arms from it)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distill_cub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100-227")
    parser.add_argument("--out", default="runs/cub-kd")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--student-init", choices=("imagenet", "random"), default="imagenet",
                        help="imagenet: the shipped ImageNet MobileNetV1-0.25; random: from scratch")
    parser.add_argument("--embed-dim", type=int, help="embedding size (default: 0 = pooled features for ImageNet "
                        "or weight-selected students, 128 for random ones)")
    parser.add_argument("--lr", type=float, help="learning rate (default: 5e-4 pretrained students, 2e-3 random)")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="epochs of init_imagenet_pretrain's first stage (0: --epochs)")
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="0: training images / batch")
    parser.add_argument("--batch-classes", type=int, default=16)
    parser.add_argument("--images-per-class", type=int, default=4)
    parser.add_argument("--teacher", default="efficientnet_lite2")
    parser.add_argument("--teacher-size", type=int, default=224)
    parser.add_argument("--student-size", type=int, default=128)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every arm runs once per seed")
    parser.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    parser.add_argument("--unlabeled-data", default="../shared/data/imagenet-unlabeled-128",
                        help="unlabeled photos of the semi arm and the pre-training stage (never a test split)")
    parser.add_argument("--unlabeled-limit", type=int, default=4000,
                        help="use this many of the unlabeled photos, evenly spaced (0: all; the teacher embeds each)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a Config option for every arm (repeatable), e.g. kl_temperature=0.05: recipe variants "
                        "run in their own folders (OUT/.../<arm>+kl_temperature=0.05) and rows")
    parser.add_argument("--selection-weights", default="../shared/weights/mobilenet_v1_0.5_160_quant.tflite",
                        help="ImageNet MobileNetV1-0.5 .tflite the init_selection arm selects its weights from")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", help="report path without suffix (.md and .json; default: OUT/distill_cub, "
                        "in the run folder: the committed results under benchmarks/results/ change only on purpose)")
    parser.add_argument("--title", help="the data set's name in the report (default: --data's folder name)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        args.seeds = str(args.seed)
    if args.results is None:
        args.results = str(Path(args.out) / "distill_cub")
    return args


def data_title(args) -> str:
    """The data set's name in the report: ``--title``, else the name of ``--data`` (folder, or zip without
    its suffix) -- not a fixed "CUB-100" for whatever data was given."""
    if args.title:
        return args.title
    path = Path(args.data).resolve()
    return path.stem if path.suffix.lower() == ".zip" else path.name


@cli_entry
def main(argv=None) -> int:
    args = parse_args(argv)
    arms = comma_choices(args.arms, ARMS, "arm")
    seeds = parse_seeds(args)

    from benchmarks.machine import describe
    from mobilekd.engine import TeacherTestEmbeddings

    started = time.time()
    check_inputs(args, arms)
    if any(arm_init(args, a) == "selection" for a in arms):
        import_selection(args)
    per_seed: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    stage1_runs: dict[str, dict[int, dict | None]] = {}
    teacher_metrics = None
    teacher_tests = TeacherTestEmbeddings()  # the teacher is frozen: its test pass is computed once for all arms
    costs: dict[str, dict[str, dict]] = {}  # row -> seed -> CPU and wall minutes of that arm's run
    cache_costs: dict[str, dict] = {}  # seed -> CPU and wall minutes of building its teacher caches (when built)
    for seed in seeds:
        configs = [arm_config(args, a, seed) for a in arms if a != "zero_shot"]
        configs += [pretrain_config(args, a, seed) for a in arms if ARMS[a].get("pretrain")]
        caches = dict.fromkeys(c.teacher_cache for c in configs if c.teacher_cache)
        # one teacher pass per cache, shared by the arms that use it (built before any of them)
        charged = [charged_cache_cost(next(c for c in configs if c.teacher_cache == cache), Path(cache))
                   for cache in caches]
        cache_costs[str(seed)] = {key: round(sum(c[key] for c in charged), 3) for key in ("cpu_minutes", "wall_minutes")}
        done: dict[str, dict] = {}  # arms of identical options (alone and init_imagenet on ImageNet students) run once
        for arm in arms:
            config = arm_config(args, arm, seed)
            twin = json.dumps({**config.to_dict(), "out": None, "zero_shot": arm == "zero_shot"}, sort_keys=True)
            if twin in done:
                print(f"== {arm} (seed {seed}): the same run as an arm above, reusing its metrics", flush=True)
            earlier = twin in done or finished_summary(config) is not None
            with cost_meter() as cost:
                summary = done[twin] = done.get(twin) or run_arm(args, arm, seed, teacher_tests=teacher_tests)
            if not earlier:  # an arm reused from an earlier run has no cost of its own to record here
                costs.setdefault(row_name(args, arm), {})[str(seed)] = cost
            per_seed[arm][seed] = summary["test"]
            teacher_metrics = teacher_metrics or summary.get("teacher")
            if ARMS[arm].get("pretrain"):  # the first stage's own test metrics: what pre-training alone reached
                stage1 = finished_summary(pretrain_config(args, arm, seed))
                stage1_runs.setdefault(arm, {})[seed] = stage1["test"] if stage1 else None

    rows, sd, by_seed = {}, {}, {}
    if teacher_metrics:
        rows[f"teacher {args.teacher} (ImageNet, {args.teacher_size} px)"] = teacher_metrics
    for arm, metrics in per_seed.items():
        name = row_name(args, arm)
        rows[name] = mean_metrics(list(metrics.values()))
        if len(seeds) > 1:
            sd[name] = {k: statistics.stdev(m[k] for m in metrics.values()) for k in rows[name] if k != "queries"}
            by_seed[name] = {str(seed): m for seed, m in metrics.items()}
    for arm, metrics in stage1_runs.items():
        if all(metrics.values()):
            rows[f"{row_name(args, arm)} stage 1 only (label-free KL, {args.pretrain_epochs or args.epochs} epochs)"] = \
                mean_metrics(list(metrics.values()))
    lines = [format_table(rows)]
    if sd:
        lines.append(f"\nMean over seeds {args.seeds}; standard deviation (R@1 / MAP@R): " +
                     ", ".join(f"{row_name(args, arm).rsplit(' ', 1)[1]} {sd[row_name(args, arm)]['R@1']:.2f} / "
                               f"{sd[row_name(args, arm)]['MAP@R']:.2f}" for arm in arms))
    alone = rows[row_name(args, "alone")]["R@1"] if "alone" in arms else None
    gap = teacher_metrics["R@1"] - alone if teacher_metrics and alone is not None else 0.0
    if gap > 0:  # no gap (a student as good as its teacher): no fraction to report
        lines.append("\nFraction of the student-alone -> teacher R@1 gap closed: " +
                     ", ".join(f"{arm} {100 * (rows[row_name(args, arm)]['R@1'] - alone) / gap:.1f}%"
                               for arm in arms if arm != "alone"))
    command = command_line("benchmarks.distill_cub", argv)
    minutes = (time.time() - started) / 60
    report = (f"# Distillation on {data_title(args)} (test classes unseen in training)\n\nCommand: `{command}`\n\n"
              f"Wall time of this invocation: {minutes:.1f} min\n\n" + "\n".join(lines) + "\n")
    result = {"command": command, "machine": describe(), "rows": rows, "args": vars(args), "minutes": minutes,
              "costs": costs, "cache_costs": cache_costs}
    if sd:
        result.update(sd=sd, seeds=by_seed)
    publish(args.results, report, result)
    return 0


@contextlib.contextmanager
def cost_meter():
    """Yields a dict filled on exit with the block's ``cpu_minutes`` (this process's threads and its finished
    child processes: what the block cost the machine) and ``wall_minutes``."""
    cost: dict = {}
    cpu, wall = sum(os.times()[:4]), time.time()
    try:
        yield cost
    finally:
        cost.update(cpu_minutes=round((sum(os.times()[:4]) - cpu) / 60, 3),
                    wall_minutes=round((time.time() - wall) / 60, 3))


def mean_metrics(runs: list[dict]) -> dict:
    """The per-metric mean of several seeds' metrics (one run: itself)."""
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]} if len(runs) > 1 else runs[0]


if __name__ == "__main__":
    sys.exit(main())

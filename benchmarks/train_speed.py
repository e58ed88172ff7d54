"""How fast does a student train on this CPU? Images/s of one distillation step, per setting.

    python -m benchmarks.train_speed --sizes 128,224 --threads 1,2 \\
        --settings eager,channels_last,bf16,compile --out benchmarks/results/train_speed/step_settings

One step is what ``mobilekd.engine`` does per batch with a cached teacher: the student's forward and backward
on a P x K batch (default 16 x 4 = 64 images), the normalised-softmax metric loss plus the distance-
distribution KL to 1280-d teacher targets, and an AdamW update. The settings:

  eager          float32, NCHW, PyTorch eager (today's default)
  channels_last  the student and its inputs in channels-last memory format
  bf16           torch.autocast("cpu", bfloat16) around the forward (this CPU may have AVX-512 BF16)
  compile        torch.compile(student) (Inductor; compile time excluded by the warm-up)

Rounds are interleaved (every size x threads x setting once per round, in a shuffled order) so background
load shows up as spread, not as bias; reported: median and min images/s over the rounds. With ``--data`` it
also measures the data side: views rendered per second from the decoded-image cache (crop + resize +
normalise), which bounds the step rate from the loader's side. Speed is only half the answer: each setting's
gradients are compared with float64 NCHW on one batch (``gradient error``), since a faster step that computes
another gradient is not the same training.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from benchmarks import comma_choices, command_line, markdown_table, publish
from mobilekd.errors import cli_entry

SETTINGS = ("eager", "channels_last", "bf16", "compile", "compile+channels_last")


def build_step(student_name: str, size: int, setting: str, batch: int, classes: int, seed: int = 0):
    """A closure running one training step of ``setting`` on fixed random inputs."""
    import torch
    import torch.nn.functional as F

    from mobilekd.losses import DistanceKLLoss, MetricLoss
    from mobilekd.models import create_model

    torch.manual_seed(seed)
    student = create_model(student_name, embed_dim=128, size=size).train()
    metric = MetricLoss("normalized_softmax", classes, student.embed_dim)
    kl = DistanceKLLoss(0.1)
    inputs = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) % classes
    targets = F.normalize(torch.randn(batch, 1280), dim=1)
    if "channels_last" in setting:
        student = student.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(student) if "compile" in setting else student
    optimizer = torch.optim.AdamW([*student.parameters(), *metric.parameters()], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "bf16"):
            embeddings = forward(inputs)
        embeddings = embeddings.float()
        loss = metric(embeddings, labels) + kl(embeddings, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def gradient_error(student_name: str, setting: str, size: int = 32, batch: int = 12, seed: int = 0) -> float:
    """Relative error of the whole gradient (norm of the difference / norm of the reference, over every
    parameter) under ``setting`` against float64 NCHW eager, on one train-mode batch: a faster setting must compute the
    same training step (measured: channels-last gives 5-7 % on the first convolutions with torch 2.13 CPU)."""
    import copy

    import torch

    from mobilekd.models import create_model

    torch.manual_seed(seed)
    student = create_model(student_name, embed_dim=16, size=size).train()
    inputs, weights = torch.randn(batch, 3, size, size), torch.randn(batch, 16)

    def gradients(model, x, autocast=False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        (out.double() * weights.double()).sum().backward()
        return {name: p.grad.double() for name, p in model.named_parameters()}

    reference = gradients(copy.deepcopy(student).double(), inputs.double())
    model, x = copy.deepcopy(student), inputs
    if "channels_last" in setting:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if "compile" in setting:
        model = torch.compile(model)
    got = gradients(model, x, autocast=setting == "bf16")
    difference = sum(float((got[n.removeprefix("_orig_mod.")] - r).pow(2).sum()) for n, r in reference.items())
    return (difference / sum(float(r.pow(2).sum()) for r in reference.values())) ** 0.5


def engine_rates(data: str, teacher_cache: str, size: int, cases: list[tuple[int, str]], steps: int, rounds: int,
                 warmup: int, seed: int = 0) -> dict[tuple[int, str], list[float]]:
    """Images/s of ``mobilekd.engine.Trainer.train_step`` with its own DataLoader: the ImageNet student
    (``mobilenetv1_025 --pretrained``, pooled features), label-free KL to the cached teacher targets
    (``teacher_cache``: built for ``data`` with ``seed``, 2 views, crop scale 0.35, e.g. by benchmarks.distill_cub),
    per (threads, memory format) case. One Trainer per size: each case sets the thread count and the student's
    layout the way ``Trainer.__init__`` does for ``--memory-format``; rounds interleave the cases."""
    import tempfile

    import torch

    from mobilekd.config import Config
    from mobilekd.engine import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = Config(data=data, out=out, student="mobilenetv1_025", pretrained=True, embed_dim=0, student_size=size,
                        teacher="efficientnet_lite2", teacher_size=192, teacher_cache=teacher_cache, views=2,
                        crop_scale=0.35, metric_loss="none", kl_weight=1.0, kl_temperature=0.1, lr=1e-3, epochs=1,
                        seed=seed, threads=max(t for t, _ in cases), memory_format="contiguous", progress=False)
        trainer = Trainer(config)
        domain = trainer.domains[0]

        def batches():
            while True:
                yield from domain.loader

        feed = batches()
        rates = {case: [] for case in cases}
        for round_index in range(warmup + rounds):
            order = list(cases)
            random.Random(round_index).shuffle(order)
            for threads, memory_format in order:
                torch.set_num_threads(threads)
                trainer.channels_last = memory_format == "channels_last"
                trainer.student.to(memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
                started, images = time.perf_counter(), 0
                for _ in range(steps):
                    batch = next(feed)  # the loader's time counts: it is part of every real step
                    trainer.train_step(domain, batch)
                    images += len(batch["student"])
                if round_index >= warmup:
                    rates[(threads, memory_format)].append(images / (time.perf_counter() - started))
        return rates


def render_rate(data: str, size: int, seconds: float = 5.0) -> float:
    """Views rendered per second from the decoded-image cache (one process)."""
    from mobilekd.data import ViewDataset, load_image_set
    from mobilekd.data.views import ViewSampler
    from mobilekd.preprocess import Preprocess

    images = load_image_set(data, "train")
    dataset = ViewDataset(images, {"student": Preprocess(size)}, ViewSampler(0), preload_side=320, progress=False)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        dataset[(count % len(dataset), 1 + count % 7)]
        count += 1
    return count / (time.perf_counter() - started)


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="mobilenetv1_025")
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--settings", default="eager,channels_last,bf16,compile")
    parser.add_argument("--batch", type=int, default=64, help="images per step (P x K)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", help="also measure the view-rendering rate on this data set")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--engine-cache", metavar="TEACHER_CACHE",
                        help="instead of the synthetic step: the real Trainer on --data (ImageNet student, label-free "
                        "KL to this teacher cache of --engine-seed, 2 views), per --threads x memory format (contiguous, "
                        "channels_last)")
    parser.add_argument("--engine-seed", type=int, default=0, help="the seed the --engine-cache was built with")
    args = parser.parse_args(argv)
    from mobilekd.errors import MobileKDError

    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise MobileKDError("--sizes and --threads take comma-separated integers") from None
    if min(sizes) < 32 or min(threads) < 1 or min(args.batch, args.steps, args.rounds) < 1 or args.warmup < 0:
        raise MobileKDError("--sizes must be >= 32; --threads, --batch, --steps, --rounds >= 1; --warmup >= 0")
    if args.engine_cache:
        return engine_main(args, argv, sizes, threads)
    settings = comma_choices(args.settings, SETTINGS, "setting")
    import torch

    from benchmarks.machine import describe

    cases = [(size, thread, setting) for size in sizes for thread in threads for setting in settings]
    steps = {}
    for size, thread, setting in cases:
        torch.set_num_threads(thread)
        step = build_step(args.student, size, setting, args.batch, classes=16)
        for _ in range(args.warmup):
            step()
        steps[(size, thread, setting)] = step
        print(f"warmed up {size} px, {thread} thread(s), {setting}", file=sys.stderr, flush=True)
    rates = {case: [] for case in cases}
    for round_index in range(args.rounds):
        order = list(cases)
        random.Random(round_index).shuffle(order)
        for case in order:
            torch.set_num_threads(case[1])
            started = time.perf_counter()
            for _ in range(args.steps):
                steps[case]()
            rates[case].append(args.batch * args.steps / (time.perf_counter() - started))
    rows = [{"size": size, "threads": thread, "setting": setting,
             "images_per_s_median": round(statistics.median(rates[(size, thread, setting)]), 2),
             "images_per_s_min": round(min(rates[(size, thread, setting)]), 2)}
            for size, thread, setting in cases]
    grad_error = {setting: gradient_error(args.student, setting) for setting in settings}
    render = {size: round(render_rate(args.data, size), 1) for size in sizes} if args.data else None
    command = command_line("benchmarks.train_speed", argv)
    table = []
    for row in rows:
        base = next((r["images_per_s_median"] for r in rows if r["size"] == row["size"] and
                     r["threads"] == row["threads"] and r["setting"] == "eager"), None)
        table.append([row["size"], row["threads"], row["setting"], row["images_per_s_median"], row["images_per_s_min"],
                      f"{row['images_per_s_median'] / base:.2f}x" if base else "n/a",
                      f"{grad_error[row['setting']]:.1e}"])
    lines = [f"# Training-step speed ({args.student}, batch {args.batch})", "", f"Command: `{command}`", "",
             *markdown_table(["size", "threads", "setting", "images/s (median)", "images/s (min)", "vs eager",
                              "gradient error vs float64"], table)]
    if render:
        lines += ["", "View rendering from the decoded-image cache (1 process): " +
                  ", ".join(f"{size} px {rate} views/s" for size, rate in render.items())]
    publish(args.out, "\n".join(lines) + "\n", {"command": command, "machine": describe(), "args": vars(args),
                                                "rows": rows, "render_views_per_s": render,
                                                "gradient_error_vs_float64": grad_error})
    return 0


def engine_main(args, argv, sizes: list[int], threads: list[int]) -> int:
    """``--engine-cache``: images/s of the real training step per size x threads x memory format."""
    from pathlib import Path

    from benchmarks.machine import describe
    from mobilekd.errors import MobileKDError

    if not args.data or not Path(args.engine_cache, "manifest.json").is_file():
        raise MobileKDError("--engine-cache needs --data and a teacher cache folder (manifest.json) built for it")
    cases = [(t, fmt) for t in threads for fmt in ("contiguous", "channels_last")]
    rows = []
    for size in sizes:
        rates = engine_rates(args.data, args.engine_cache, size, cases, args.steps, args.rounds, args.warmup,
                             args.engine_seed)
        rows += [{"size": size, "threads": t, "memory_format": fmt,
                  "images_per_s_median": round(statistics.median(rates[(t, fmt)]), 2),
                  "images_per_s_min": round(min(rates[(t, fmt)]), 2)} for t, fmt in cases]
    command = command_line("benchmarks.train_speed", argv)
    table = []
    for row in rows:
        base = next(r["images_per_s_median"] for r in rows if r["size"] == row["size"] and r["threads"] == min(
            c[0] for c in cases) and r["memory_format"] == "contiguous")
        table.append([row["size"], row["threads"], row["memory_format"], row["images_per_s_median"],
                      row["images_per_s_min"], f"{row['images_per_s_median'] / base:.2f}x"])
    report = "\n".join([
        "# Training speed of the real engine step (ImageNet MobileNetV1-0.25, label-free KL, cached teacher)", "",
        f"Command: `{command}`", "",
        *markdown_table(["size", "threads", "memory format", "images/s (median)", "images/s (min)",
                         "vs 1 thread NCHW"], table)]) + "\n"
    publish(args.out, report, {"command": command, "machine": describe(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

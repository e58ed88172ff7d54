"""What the training loop calls around its epochs (as pytorch-metric-learning's end-of-epoch hooks or
torchdistill's post-epoch processes): evaluation on a cadence, checkpoints, the history and its log line,
the DDP barrier and, at the end, metrics.json and the folder unlock. A student that starts from weights is
evaluated before its first step too, so the end of the run can say whether training made it worse.

A hook overrides any of ``on_train_start(run)``, ``on_epoch_end(run, epoch, record)`` (``record``: the epoch's
mean losses, which a hook may extend) and ``on_train_end(run, summary)``; ``main_only`` hooks run in the main
process only. ``default_hooks`` is the order a run uses: a record is evaluated, then kept, then saved, then
logged, and every process waits at the barrier before the next epoch.
"""

from __future__ import annotations

from mobilekd.engine.builders import log
from mobilekd.io import unlock_folder, write_json
from mobilekd.models.checkpoint import is_checkpoint


class Hook:
    main_only = True

    def on_train_start(self, run) -> None:
        pass

    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        pass

    def on_train_end(self, run, summary: dict) -> None:
        pass


def starts_from_weights(config) -> bool:
    """Whether the run's student has something to lose: ImageNet, ``--student-weights``, ``--init-from`` or a
    trained checkpoint folder as ``--student`` (a run continued from, say, a 224 px student)."""
    return bool(config.pretrained or config.student_weights or config.init_from or is_checkpoint(config.student))


def below_untrained(trained: dict | None, untrained: dict | None) -> bool:
    """Whether the trained student retrieves worse (lower R@1) than the one the run started from."""
    return bool(trained and untrained) and trained["R@1"] < untrained["R@1"]


class StartingPointHook(Hook):
    """The untrained student's test metrics before the first step (``run.untrained``; kept across a resume),
    and at the end, beside the trained ones in metrics.json, a plain warning when training made it worse."""

    def on_train_start(self, run) -> None:
        if run.start_epoch == 0 and run.untrained is None and starts_from_weights(run.config):
            run.untrained = run.evaluate()["test"]
            log(f"untrained student: test R@1 {run.untrained['R@1']:.2f} MAP@R {run.untrained['MAP@R']:.2f}")

    def on_train_end(self, run, summary: dict) -> None:
        if run.untrained is None:
            return
        summary["untrained"] = run.untrained
        summary["below_untrained"] = below_untrained(summary.get("test"), run.untrained)
        if summary["below_untrained"]:
            trained = summary["test"]
            log(f"warning: training made the student worse: test R@1 {trained['R@1']:.2f} (MAP@R "
                f"{trained['MAP@R']:.2f}) after training, {run.untrained['R@1']:.2f} "
                f"({run.untrained['MAP@R']:.2f}) before it. Do not ship this checkpoint: ship the untrained "
                "student, or try the shipped recipe (--config) or fewer epochs / a lower --lr")


class EvaluationHook(Hook):
    """Test metrics every ``eval_every`` epochs and after the last, into the epoch's record."""

    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        if (epoch + 1) % run.config.eval_every == 0 or epoch + 1 == run.config.epochs:
            record.update(run.evaluate())


class HistoryHook(Hook):
    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        run.history.append(record)


class CheckpointHook(Hook):
    """``config.json`` at the start, the checkpoint (``run.save``) after every epoch."""

    def on_train_start(self, run) -> None:
        write_json(run.out / "config.json", run.config.to_dict())

    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        run.save(epoch)


class LogHook(Hook):
    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        log(epoch_line(record, run.domains))


class BarrierHook(Hook):
    """Every process finishes the epoch (the main one its evaluation and checkpoint) before the next."""

    main_only = False

    def on_epoch_end(self, run, epoch: int, record: dict) -> None:
        run.context.barrier()


class SummaryHook(Hook):
    """``metrics.json`` and the release of the run's folder lock."""

    def on_train_end(self, run, summary: dict) -> None:
        write_json(run.out / "metrics.json", summary)
        unlock_folder(run.out)


def default_hooks() -> list[Hook]:
    return [StartingPointHook(), EvaluationHook(), HistoryHook(), CheckpointHook(), LogHook(), BarrierHook(),
            SummaryHook()]


def epoch_line(record: dict, domains: list) -> str:
    line = f"epoch {record['epoch']}: loss {record['loss']:.4f} ({record['seconds']:.0f} s)"
    if "test" in record:
        line += f" | test R@1 {record['test']['R@1']:.2f} MAP@R {record['test']['MAP@R']:.2f}"
    for domain in domains[1:]:
        if domain.name in record:
            line += f" | {domain.name} R@1 {record[domain.name]['test']['R@1']:.2f}"
    if "student_to_teacher" in record:
        line += f" | student->teacher R@1 {record['student_to_teacher']['R@1']:.2f}"
    return line

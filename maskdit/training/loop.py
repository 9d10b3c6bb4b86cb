"""What the training loop does around the step, one part each: the metrics log, the evaluator, the checkpointer
and the stop policy.

:meth:`maskdit.training.trainer.Trainer.run` is their sequencer: after every step each part says whether the
step is its own (``due``) and acts. The decisions that depend on one rank's view (a signal, rank 0's clocks)
are first made common to every rank by one host collective per step (:func:`agree_after_step`), so all ranks
take the same decisions after the same step; nothing here reads the device except at log steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from maskdit.checkpoint import latest_checkpoint
from maskdit.config import Config
from maskdit.distributed import World, agree, mean_over_ranks
from maskdit.errors import Interrupted, MaskditError
from maskdit.files import write_text_atomic


class TrainingDiverged(MaskditError):
    """``nan_tolerance`` steps in a row had a non-finite loss or gradient."""


class StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM ask the loop to finish its step, checkpoint and stop.

    A second signal stops at once (the previous checkpoint stays intact), except inside
    :meth:`critical` (a checkpoint being written), where it is ignored so the checkpoint completes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._critical = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._critical:
            print("still writing the checkpoint: it will be complete in a moment", file=sys.stderr)
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class TrainingClock:
    """Seconds of training since this run (re)started: wall time less the evaluations, which count neither
    in the ``max_seconds`` budget nor in ``steps_per_s``."""

    def __init__(self) -> None:
        self._started = time.time()

    def seconds(self) -> float:
        return time.time() - self._started

    @contextlib.contextmanager
    def paused(self) -> Iterator[float]:
        """Stops the clock for the block; yields the training seconds at which it stopped."""
        start = time.time()
        try:
            yield start - self._started
        finally:
            self._started += time.time() - start


class NonFiniteStreak:
    """Steps in a row whose loss or gradient was not finite, counted on the device (the step never waits
    for it); the longest streak is read on the host at log steps only."""

    def __init__(self, device: torch.device):
        self.current = torch.zeros((), dtype=torch.int64, device=device)
        self.longest = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, bad: torch.Tensor) -> None:
        self.current = torch.where(bad, self.current + 1, torch.zeros_like(self.current))
        self.longest = torch.maximum(self.longest, self.current)


class Party(Protocol):
    """A part of the loop whose decision depends on one rank's view: it votes, then hears the agreed votes."""

    def votes(self, seconds: float) -> list[float]: ...

    def agreed(self, seconds: float, votes: list[float]) -> None: ...


def agree_after_step(world: World, clock: TrainingClock, *parties: Party) -> None:
    """One host collective per step (the element-wise maximum of every party's votes over the ranks), so a
    signal on any rank and rank 0's clocks decide the same for every rank."""
    seconds = clock.seconds()
    votes = [party.votes(seconds) for party in parties]
    agreed = iter(agree(world, [v for own in votes for v in own]))
    for party, own in zip(parties, votes):
        party.agreed(seconds, [next(agreed) for _ in own])


class StopPolicy:
    """When the run ends: after step ``end``; after the step at which rank 0's training clock passed
    ``max_seconds`` (a normal end, checkpointed); after the step during which any rank was signalled (every
    rank stops, checkpoints and raises :class:`Interrupted`); or, checked at log steps, once ``nan_tolerance``
    steps in a row were not finite (:class:`TrainingDiverged`, keeping the last good checkpoint)."""

    def __init__(self, cfg: Config, end: int, world: World, signals: StopOnSignal, streak: NonFiniteStreak,
                 run_dir: Path):
        self.cfg, self.end, self.world, self.signals = cfg, end, world, signals
        self.streak, self.run_dir = streak, run_dir
        self.signal: int | None = None  # the agreed signal number once any rank was signalled
        self.out_of_time = False

    def votes(self, seconds: float) -> list[float]:
        budget = self.cfg.max_seconds
        return [self.signals.signum or 0, float(self.world.main and budget is not None and seconds >= budget)]

    def agreed(self, seconds: float, votes: list[float]) -> None:
        self.signal, self.out_of_time = int(votes[0]) or None, votes[1] > 0

    def listen(self) -> None:
        """Agree again on signals (after a checkpoint write, during which one may have come)."""
        self.signal = self.signal or int(agree(self.world, [self.signals.signum or 0])[0]) or None

    def last(self, step: int) -> bool:
        """Whether ``step`` is the run's last, ending normally."""
        return step == self.end or self.out_of_time

    def done(self, step: int) -> bool:
        return step >= self.end or self.out_of_time or self.signal is not None

    def check_finite(self, step: int) -> None:
        """Raise :class:`TrainingDiverged` once ``nan_tolerance`` steps in a row were skipped (reads the device)."""
        longest = int(self.streak.longest.item())
        if longest >= self.cfg.nan_tolerance:
            last = latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise TrainingDiverged(
                f"training stopped before step {step}: the loss or gradients were not finite for {longest} "
                f"steps in a row (nan_tolerance={self.cfg.nan_tolerance}); {kept}; lower lr or check the data"
            )

    def interrupted(self, step: int, path: Path) -> Interrupted:
        """The exception that ends a signalled run whose checkpoint ``path`` is written (rank 0 says so)."""
        assert self.signal is not None
        if self.world.main:
            print(f"stopped by {signal.Signals(self.signal).name} at step {step}: saved {path}; "
                  "continue with --resume", file=sys.stderr)
        return Interrupted(self.signal, path)


class MetricsLog:
    """Every ``log_every`` steps (and at each checkpoint) one ``metrics.jsonl`` record: the step statistics
    averaged over the steps since the last record and over the ranks, written by rank 0; it also drives
    the progress bar. Reading the statistics is the only time the loop waits on the device."""

    def __init__(self, path: Path, cfg: Config, world: World, device: torch.device, clock: TrainingClock, step: int,
                 lr: Callable[[int], float], progress: bool):
        self.every, self.world, self.device, self.clock, self.lr = cfg.log_every, world, device, clock, lr
        self.file = path.open("a") if world.main else None
        self.bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step",
                        disable=not (progress and world.main), dynamic_ncols=True, file=sys.stderr)
        self.sums: dict[str, Any] = {}
        self.count, self.last_step, self.last_seconds = 0, step, 0.0

    def add(self, stats: dict[str, torch.Tensor | float]) -> None:
        """Count one step's statistics (device tensors: summed on the device, not read)."""
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.bar.update(1)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def log(self, step: int) -> None:
        sums = mean_over_ranks(self.world, self.sums, self.device)
        seconds = self.clock.seconds()
        record = {
            "step": step, **{k: float(v) / self.count for k, v in sums.items() if k != "nan_skipped"},
            "nan_skipped": round(float(sums.get("nan_skipped", 0))),
            "lr": self.lr(step - 1),
            "steps_per_s": (step - self.last_step) / max(seconds - self.last_seconds, 1e-9),
            "elapsed_s": seconds,
        }
        self.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        self.sums, self.count, self.last_step, self.last_seconds = {}, 0, step, seconds

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line (rank 0; other ranks write nothing)."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the records logged after checkpoint ``step`` (and a line torn by a crash) so the file
    matches the weights; rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))


class Evaluator:
    """Scores the EMA weights every ``eval_every`` steps and whenever ``eval_every_s`` seconds of training
    (rank 0's clock) have passed since the last such evaluation. Rank 0 evaluates (the others only help
    gather sharded weights); the time it takes is left out of the training clock, and no RNG stream moves."""

    def __init__(self, cfg: Config, world: World, clock: TrainingClock, log: MetricsLog,
                 model: Callable[[], torch.nn.Module | None], objective: Any, dataset: Any):
        self.cfg, self.world, self.clock, self.log = cfg, world, clock, log
        self.model, self.objective, self.dataset = model, objective, dataset
        self.by_clock, self.last_seconds = False, 0.0

    def votes(self, seconds: float) -> list[float]:
        every = self.cfg.eval_every_s
        return [float(self.world.main and bool(every) and seconds - self.last_seconds >= every)]

    def agreed(self, seconds: float, votes: list[float]) -> None:
        self.by_clock = votes[0] > 0
        if self.by_clock:
            self.last_seconds = seconds

    def due(self, step: int) -> bool:
        return bool(self.cfg.eval_every and step % self.cfg.eval_every == 0) or self.by_clock

    def run(self, step: int) -> None:
        model = self.model()  # every rank enters: gathering sharded weights is a collective
        if model is None:
            return
        from maskdit.evaluate.suite import training_eval

        with self.clock.paused() as seconds:
            result = training_eval(model, self.objective, self.dataset, self.cfg)
            self.log.write({"step": step, "elapsed_s": seconds, "eval": result})


class Checkpointer:
    """Writes a checkpoint every ``ckpt_every`` steps, at the run's last step and when a signal stops it;
    ``save`` writes one (rank 0, uninterruptibly; the newest ``keep_checkpoints`` stay) and returns its path."""

    def __init__(self, every: int, save: Callable[[], Path]):
        self.every, self.save = every, save

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

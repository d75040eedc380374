"""`microgpt train`: everything around the training loop of `microgpt.train`.

`main` settles what to run (a new run, or one resumed from its checkpoint), checks it before the
first step (the folder lock, writable outputs, the memory it needs, the data), builds the engine
and hands over to a `TrainingRun`. The run is one object with one hook per event: `after_step`
(log, validate, sample, checkpoint, show progress), `save`, `interrupted`, `diverged` and
`finish` (the samples). Only the main process (`engine.rank == 0`) prints and writes.

Exports: `configure`, `main`, `TrainingRun`, `Plan`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    NonFiniteState,
    is_checkpoint,
    load_checkpoint,
    rng_json,
    save_checkpoint,
    save_snapshot,
    snapshot_state,
)
from .cli import add_config_arguments, config_from_args, config_overrides, data_arguments, engine_arguments
from .config import TRAJECTORY_FIELDS, Config, flag_of
from .data import Dataset, derived_rng, is_url, prepare
from .engines import create_engine, engine_options
from .engines.base import Engine
from .errors import UserError, WriteFailure
from .guard import FolderLock, catch_signals, check_memory, probe_writable
from .metrics import TIMESTAMP, MetricsWriter, check_metrics_path
from .progress import Progress
from .sample import continue_text, sample
from .train import TrainingDiverged, mean_loss, train

SNAPSHOT_BUDGET = 50 * 2 ** 20  # bytes of snapshots kept by default (--keep-snapshots auto)
SAMPLES_DURING_TRAINING = 5
TEXT_SAMPLE_CHARS = 200  # text mode: how long each sample of a run is (microgpt sample --max-tokens for more)
STATS_SHARE = 0.1  # matrix statistics every step only while they cost under this share of a step
STATS_PROBE = 10  # steps measured before `--stats-every auto` settles

# What a run does around training, each a flag: (default, type, metavar, help). A resumed run keeps
# what it was started with unless told otherwise.
RUN_OPTIONS: dict[str, tuple[Any, type, str, str]] = {
    "checkpoint_every": (100, int, "N", "with --out, checkpoint every N steps, and always at the end (default: 100)"),
    "keep_snapshots": ("auto", str, "N|all|none", "weights kept in DIR/snapshots at step 0 and at checkpoints "
                       f"(default: auto = all of them while they take at most {SNAPSHOT_BUDGET >> 20} MB, else an "
                       "evenly spaced subset)"),
    "sample_every": (0, int, "N", f"draw {SAMPLES_DURING_TRAINING} samples every N steps from a generator of their "
                     "own (the run itself is unchanged); they go to the metrics and the progress output (default: 0 "
                     "= off)"),
    "stats_every": ("auto", str, "N|auto|off", "log each matrix's gradient norm, weight norm, update norm and "
                    "update/weight every N steps (default: auto = every step while that costs under "
                    f"{STATS_SHARE * 100:.0f}%% of a step)"),
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Train the book's GPT on a text file (default: the names dataset, shipped with microgpt) "
                          "and print samples. Defaults are the book's faithful run.")
    run = parser.add_argument_group("run")
    data_arguments(run)
    engine_arguments(run, parser)
    run.add_argument("--out", metavar="DIR", help="write checkpoints, snapshots and metrics.jsonl to folder DIR "
                     "(one run at a time: the folder is locked while it trains)")
    run.add_argument("--metrics", metavar="FILE", help="append the run's metrics to FILE, JSON Lines (default with "
                     "--out: DIR/metrics.jsonl)")
    run.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR, bit for bit; with a "
                     "larger --steps, train a finished run further (a new stage)")
    for option, (_, kind, metavar, help_text) in RUN_OPTIONS.items():
        run.add_argument("--" + option.replace("_", "-"), type=kind, default=argparse.SUPPRESS, metavar=metavar,
                         help=help_text)
    run.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_arguments(parser)


# --- what to run -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """A run settled from the command line (and its checkpoint, when resumed), before anything is built."""

    config: Config
    engine: str
    options: dict[str, Any]
    run_options: dict[str, Any]
    data: str | None
    out: Path | None
    metrics: Path | None
    checkpoint: Checkpoint | None = None
    run_id: str = ""
    stages: list[dict[str, int]] = dataclasses.field(default_factory=list)
    note: str = ""


def plan_run(args: argparse.Namespace) -> Plan:
    """What this invocation runs: a new run, or the one checkpointed in --resume, maybe trained further."""
    if args.resume is None:
        config = config_from_args(args)
        engine = getattr(args, "engine", "numpy")
        out = Path(args.out) if args.out else None
        if out is not None and is_checkpoint(out):
            raise CheckpointError(f"{out} already holds a checkpoint: continue it with --resume {out}, "
                                  "or pick another --out folder")
        return Plan(config, engine, engine_options(args, engine), _run_options(args), args.data, out,
                    _metrics_path(args.metrics, out), None, _new_run_id(),
                    [{"from": 0, "to": config.num_steps}])

    checkpoint = load_checkpoint(args.resume)
    out = checkpoint.path
    if args.out and Path(args.out).resolve() != out.resolve():
        raise UserError(f"--out {args.out} and --resume {args.resume} name two folders: a resumed run writes into "
                        "its own folder; drop --out")
    config, stages, note = checkpoint.config, list(checkpoint.stages), ""
    wanted = config_overrides(args)
    steps = wanted.pop("num_steps", config.num_steps)
    changed = {k: v for k, v in wanted.items() if k in TRAJECTORY_FIELDS and getattr(config, k) != v}
    if changed:
        k = next(iter(changed))
        raise CheckpointError(f"{flag_of(k)} {changed[k]} does not match the checkpoint in {args.resume} "
                              f"({getattr(config, k)}): a resumed run keeps its training settings; drop "
                              f"{flag_of(k)} or start a new run with --out")
    if steps != config.num_steps:
        if steps <= checkpoint.step or steps < config.num_steps:
            raise CheckpointError(f"--steps {steps} cannot shorten the run in {args.resume} ({config.num_steps} "
                                  f"steps, {checkpoint.step} done): the learning rate schedule depends on it; drop "
                                  f"--steps, or pass more than {config.num_steps} to train it further")
        note = (f"training on to step {steps}, a new stage from step {checkpoint.step}: the learning-rate schedule "
                f"is recomputed over {steps} steps, so the result is no longer the {config.num_steps}-step run's")
        stages.append({"from": checkpoint.step, "to": steps})
    config = config_from_args(args, base=dataclasses.replace(config, num_steps=steps))
    engine = getattr(args, "engine", checkpoint.engine)
    saved = checkpoint.meta.get("engine_options", {}) if engine == checkpoint.engine else {}
    metrics = _metrics_path(args.metrics, out, checkpoint.meta.get("metrics"))
    if metrics is None and checkpoint.meta.get("metrics_hint"):
        note = (note + "; " if note else "") + (f"the interrupted run logged to {checkpoint.meta['metrics_hint']}: "
                                                "pass --metrics FILE to go on logging there")
    data = args.data if args.data is not None else checkpoint.meta.get("data")
    return Plan(config, engine, engine_options(args, engine, saved),
                _run_options(args, checkpoint.meta.get("run_options")), data, out, metrics, checkpoint,
                checkpoint.meta.get("run_id") or _new_run_id(), stages, note)


def _new_run_id() -> str:
    """Twelve random hex digits: what tells this run's lines from other runs' in a shared metrics file."""
    return os.urandom(6).hex()


def _run_options(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's own options: the defaults, then what a resumed run was started with, then the flags given."""
    defaults = {k: default for k, (default, *_) in RUN_OPTIONS.items()}
    options = {**defaults, **(saved or {}), **{k: getattr(args, k) for k in RUN_OPTIONS if hasattr(args, k)}}
    if not isinstance(options["checkpoint_every"], int) or options["checkpoint_every"] < 1:
        raise UserError(f"--checkpoint-every must be a positive integer, got {options['checkpoint_every']}")
    if not isinstance(options["sample_every"], int) or options["sample_every"] < 0:
        raise UserError(f"--sample-every must be 0 (off) or a positive number of steps, got {options['sample_every']}")
    # Stored as typed, so a checkpoint records numbers as numbers.
    every = _stats_every(options["stats_every"])
    options["stats_every"] = "off" if every is None else "auto" if every == 0 else every
    keep = options["keep_snapshots"]
    options["keep_snapshots"] = keep if keep in ("all", "auto", "none") else _keep_count(keep, 1)
    return options


def _metrics_path(given: str | None, out: Path | None, recorded: str | None = "metrics.jsonl") -> Path | None:
    """--metrics FILE, else the run folder's own metrics file (a plain name inside it), else none."""
    if given:
        return Path(given)
    return out / recorded if out is not None and recorded else None


def _recorded_metrics(metrics: Path | None, out: Path | None) -> dict[str, str | None]:
    """How a checkpoint names its metrics file: a plain name when inside its folder, else only as a hint."""
    if metrics is None:
        return {"metrics": None, "metrics_hint": None}
    if out is not None and metrics.resolve().parent == out.resolve():
        return {"metrics": metrics.name, "metrics_hint": None}
    return {"metrics": None, "metrics_hint": str(metrics.resolve())}


# --- the command ----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    dataset, rng = prepare(plan.config, plan.data, plan.checkpoint.vocab if plan.checkpoint else None,
                           getattr(args, "sha256", None))
    if plan.checkpoint is not None and plan.checkpoint.meta["data_fingerprint"] != dataset.fingerprint:
        raise CheckpointError(f"checkpoint {plan.out} was trained on other data than {dataset.path}: pass the same "
                              f"--data as the original run ({plan.checkpoint.meta.get('data') or 'the names dataset'})")
    check_memory(plan.config, dataset.tokenizer.vocab_size, plan.engine)
    engine = create_engine(plan.engine, plan.config, dataset.tokenizer.vocab_size, rng, **plan.options)
    try:
        lock = nullcontext()
        if engine.rank == 0 and plan.out:
            probe_writable(plan.out)
            lock = FolderLock(plan.out)
        with lock:
            if engine.rank == 0 and plan.metrics:
                check_metrics_path(plan.metrics, dataset.path)
            return TrainingRun(engine, dataset, rng, plan, args).run()
    finally:
        engine.close()


class TrainingRun:
    """One run of the training loop with everything around it; a hook per event."""

    def __init__(self, engine: Engine, data: Dataset, rng: random.Random, plan: Plan, args: argparse.Namespace) -> None:
        self.engine, self.data, self.rng, self.plan = engine, data, rng, plan
        self.config = config = plan.config
        self.main = engine.rank == 0
        self.quiet = args.quiet
        options = plan.run_options
        self.checkpoint_every, self.sample_every = options["checkpoint_every"], options["sample_every"]
        self.samples_rng = derived_rng(config.seed, "samples") if self.sample_every else None
        self.stats_every = _stats_every(options["stats_every"]) if plan.metrics else None
        self.start_step, self.elapsed_before = 0, 0.0
        if plan.checkpoint is not None:
            self.restore(plan.checkpoint)
        self.keep = self.snapshot_steps(options["keep_snapshots"])
        self.last_saved = self.start_step
        self.val_loss: float | None = None
        self.signals = None
        self.metrics: MetricsWriter | None = None
        self.progress: Progress | None = None
        self.started = time.perf_counter()
        self.current_step = self.start_step  # the last step completed
        self.in_hook = False  # whether after_step is running (then current_step is the step that stops)
        self.measured: list[tuple[float, float, float]] = []  # auto stats: (step s, stats s, when) of early steps

    # Setting up.

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue where the checkpoint stopped: weights, optimizer, every generator, the clock."""
        checkpoint.restore(self.engine)
        self.rng.setstate(checkpoint.rng_state())
        for name, rng in (("windows", self.data.windows), ("samples", self.samples_rng)):
            if rng is not None and checkpoint.rng_state(name) is not None:
                rng.setstate(checkpoint.rng_state(name))
        self.start_step = checkpoint.step
        self.elapsed_before = checkpoint.meta.get("elapsed", 0.0)

    def snapshot_steps(self, keep: str) -> set[int]:
        """The steps whose weights go to snapshots/: step 0 and the checkpoint steps, within the budget."""
        if not self.plan.out:
            return set()
        every, n = self.checkpoint_every, self.config.num_steps
        planned = sorted({0, n, *range(every, n + 1, every)})
        size = self.engine.num_params * 8 + 200 * len(self.engine.shapes)
        count = _keep_count(keep, len(planned))
        if keep == "auto":
            count = min(len(planned), max(2, SNAPSHOT_BUDGET // size))
            if count < len(planned) and self.main and self.start_step == 0:
                print(f"keeping {count} of {len(planned)} snapshots ({size / 2**20:.1f} MB each; "
                      f"--keep-snapshots all keeps every one)", file=sys.stderr)
        if count >= len(planned):
            return set(planned)
        if count == 1:
            return {planned[-1]}
        return {planned[round(i * (len(planned) - 1) / (count - 1))] for i in range(count)} if count else set()

    def header(self) -> dict[str, Any]:
        d = self.data
        return {"run_id": self.plan.run_id, "engine": self.engine.name, "config": self.config.to_dict(),
                "data": str(d.path), "data_format": d.format, "vocab_size": d.tokenizer.vocab_size,
                "num_params": self.engine.num_params, "num_docs": d.size,
                "started": time.strftime(TIMESTAMP)}

    # The run.

    def say(self, *text: str, **kwargs: Any) -> None:
        if self.main:
            print(*text, **kwargs)

    def run(self) -> int:
        c, d = self.config, self.data
        if d.format == "lines":
            self.say(f"num docs: {len(d.docs)}")
        else:
            self.say(f"num characters: {d.size:,} ({len(d.train_ids):,} for training, {len(d.val_ids):,} held out"
                     + (", the text mode's default --val-fraction 0.1)" if c.val_fraction == 0.1 else ")"))
        self.say(f"vocab size: {d.tokenizer.vocab_size}")
        self.say(f"num params: {self.engine.num_params}")
        if self.plan.note:
            self.say(f"note: {self.plan.note}", file=sys.stderr)
        if self.start_step:
            self.say(f"resuming from step {self.start_step} of {c.num_steps} ({self.plan.out})")
        with catch_signals(self.on_signal) as self.signals:
            if self.main and self.plan.metrics:
                self.metrics = MetricsWriter(self.plan.metrics, self.header(),
                                             self.start_step if self.plan.checkpoint else None)
            if self.main and not self.quiet:
                self.progress = Progress(c.num_steps, self.start_step,
                                         history=self.metrics.kept if self.metrics else ())
            try:
                if self.start_step == 0 and 0 in self.keep and self.main:
                    self.write(lambda: save_snapshot(self.plan.out, 0, self.engine.state_dict()), "snapshot 0")
                self.engine.want_stats = self.stats_due(self.start_step + 1)
                self.signals.deferring = True
                done = train(self.engine, d, c, self.start_step, self.after_step)
            except TrainingDiverged as e:
                return self.diverged(e)
            finally:
                self.signals.deferring = False
                if self.metrics:
                    self.metrics.close()
                if self.progress:
                    self.progress.close()
            if done < c.num_steps:
                return self.interrupted(done)
            return self.finish()

    def after_step(self, step: int, loss: float, lr_t: float) -> bool:
        """After every step: log it, measure validation, sample, checkpoint, show progress; True stops the loop."""
        done, c = step + 1, self.config
        now = time.perf_counter()
        self.current_step, self.in_hook = done, True  # a Ctrl-C from here on stops at this very step
        record: dict[str, Any] = {"step": done, "loss": loss, "lr": lr_t,
                                  "time": round(self.elapsed_before + now - self.started, 6)}
        saving = self.plan.out is not None and (done % self.checkpoint_every == 0 or done == c.num_steps)
        state = self.state(done) if saving and self.main else None  # checked before the step is logged
        if self.data.format == "text":
            record["window"] = self.data.last_offsets[0]
        if self.engine.last_stats is not None:
            record["stats"], self.engine.last_stats = self.engine.last_stats, None
            self.settle_stats(now)
        val_due = (c.eval_every and done % c.eval_every == 0) or done == c.num_steps
        if val_due and (self.data.val_docs or self.data.val_ids):
            record["val_loss"] = self.val_loss = mean_loss(self.engine, self.data.val_examples())
            if self.progress and done < c.num_steps:
                self.progress.note(f"step {done:4d} | val loss {self.val_loss:.4f}")
        if self.sample_every and done % self.sample_every == 0 and self.main:
            record["samples"] = self.draw(self.samples_rng, SAMPLES_DURING_TRAINING)
            if self.progress:
                self.progress.note(f"step {done:4d} | samples: {' | '.join(map(repr, record['samples']))}")
        if self.metrics:
            self.metrics.log(**record)
        if saving and self.main:
            # Written after the step is logged: a kill in between leaves a metrics file a step ahead
            # of the checkpoint, which a resume trims, never a checkpoint ahead of its metrics.
            self.save(done, state)
        if self.progress:
            self.progress.update(done, loss)
        self.engine.want_stats = self.stats_due(done + 1)
        stop = bool(self.signals.requested)
        self.in_hook = False  # after reading `stop`: a signal from here on stops after the next step
        return stop

    def stats_due(self, step: int) -> bool:
        """Whether step `step` (1-based) logs matrix statistics; `auto` logs them until it has settled."""
        if self.stats_every is None or not self.main:
            return False
        return self.stats_every == 0 or step % self.stats_every == 0

    def settle_stats(self, now: float) -> None:
        """auto: from the medians of the first steps (the very first pays for warming up), keep statistics every
        step while they cost under STATS_SHARE of one, else thin them so that they do."""
        if self.stats_every != 0:
            return
        last = self.measured[-1][2] if self.measured else self.started
        self.measured.append((now - last, self.engine.stats_seconds, now))
        if len(self.measured) < STATS_PROBE + 1:
            return
        step_s = statistics.median(s for s, _, _ in self.measured[1:])
        stats_s = statistics.median(t for _, t, _ in self.measured[1:])
        share = stats_s / max(step_s - stats_s, 1e-9)
        self.stats_every = max(1, math.ceil(share / STATS_SHARE))
        if self.stats_every > 1 and self.progress:
            self.progress.note(f"matrix statistics every {self.stats_every} steps (each costs {share:.0%} of a "
                               "step; --stats-every 1 logs every step)")

    # Saving.

    def state(self, step: int) -> dict[str, Any]:
        """The state to checkpoint after `step`; a diverged one stops the run before it is logged."""
        try:
            return snapshot_state(self.engine)
        except NonFiniteState as e:
            raise TrainingDiverged(step, f"the weights became infinite or NaN ({', '.join(e.names[:3])})") from None

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write the checkpoint of `step` (and its snapshot, if it is one to keep)."""
        out, d = self.plan.out, self.data
        meta = {
            "engine": self.engine.name, "engine_options": self.plan.options, "config": self.config.to_dict(),
            "vocab": d.tokenizer.chars, "data_fingerprint": d.fingerprint,
            "data": _recorded_data(self.plan.data, d.path),
            "rng_state": rng_json(self.rng),
            "rngs": {"windows": rng_json(d.windows), "samples": rng_json(self.samples_rng)},
            "engine_state": self.engine.extra_state(), "run_id": self.plan.run_id, "stages": self.plan.stages,
            "run_options": self.plan.run_options,
            "elapsed": self.elapsed_before + time.perf_counter() - self.started,
            **_recorded_metrics(self.plan.metrics, out),
        }
        self.write(lambda: save_checkpoint(out, state, step, meta), f"the checkpoint of step {step}")
        if step in self.keep:
            weights = {name: state[name] for name in self.engine.shapes}
            self.write(lambda: save_snapshot(out, step, weights), f"snapshot {step}")
        self.last_saved = step

    def write(self, action: Any, what: str) -> None:
        try:
            action()
        except OSError as e:
            kept = f"the last good checkpoint (step {self.last_saved}) is kept" if self.last_saved else "nothing saved"
            raise WriteFailure(f"cannot write {what} into {self.plan.out} ({e.strerror or e}): free some space or "
                               f"pick another --out; {kept}") from None

    # Ways out.

    def on_signal(self, signum: int) -> None:
        """The first Ctrl-C: say at once what happens next (the loop stops after this step)."""
        where = f"at step {self.current_step + (0 if self.in_hook else 1)}"
        if self.plan.out:
            print(f"saving a checkpoint {where}...", file=sys.stderr, flush=True)
        else:
            print(f"stopping {where}; nothing is saved without --out", file=sys.stderr, flush=True)

    def interrupted(self, done: int) -> int:
        """Stopped by Ctrl-C or SIGTERM after step `done`: save it, say how to resume, exit 128 + signal."""
        c, out = self.config, self.plan.out
        if out and self.main:
            if self.last_saved != done:
                self.signals.deferring = True  # a second Ctrl-C now says "still saving"
                try:
                    self.save(done, self.state(done))
                except TrainingDiverged as e:
                    keep = (f"the last good checkpoint (step {self.last_saved}) is in {out}" if self.last_saved
                            else "nothing saved")
                    print(f"microgpt: interrupted at step {done}, where {e.reason}: lower --lr "
                          f"(now {c.learning_rate}); {keep}", file=sys.stderr)
                    return 1
                finally:
                    self.signals.deferring = False
            metrics = "" if self.plan.metrics is None or _recorded_metrics(self.plan.metrics, out)["metrics"] \
                else f" --metrics {self.plan.metrics}"
            print(f"interrupted at step {done} of {c.num_steps}; checkpoint saved in {out}. "
                  f"Resume with: microgpt train --resume {out}{metrics}", file=sys.stderr)
        elif self.main:
            print(f"interrupted at step {done} of {c.num_steps}; nothing saved (pass --out DIR to "
                  "keep checkpoints)", file=sys.stderr)
        return 128 + self.signals.requested

    def diverged(self, e: TrainingDiverged) -> int:
        c, out = self.config, self.plan.out
        keep = f"; the last good checkpoint (step {self.last_saved}) is in {out}" if out and self.last_saved else ""
        fix = f"lower --lr (now {c.learning_rate})"
        if c.optimizer == "sgd":
            fix += " or use --optimizer adam"
        if not c.zero_grad:
            fix += " or drop --no-zero-grad (gradients never reset grow without bound)"
        if self.main:
            print(f"microgpt: training diverged at step {e.step}: {e.reason}: {fix}{keep}", file=sys.stderr)
        return 1

    def finish(self) -> int:
        """Chapter 6 after training: the validation loss, then new documents from the trained model."""
        if self.val_loss is not None:
            held = (f"{len(self.data.val_docs)} documents" if self.data.format == "lines"
                    else f"{self.config.eval_windows} windows")
            self.say(f"val loss: {self.val_loss:.4f} ({held})")
        if self.main and self.config.num_samples:
            self.say("--- samples ---")
            self.draw(self.rng, self.config.num_samples, show=True)
        return 0

    def draw(self, rng: random.Random, count: int, show: bool = False) -> list[str]:
        """`count` samples from `rng`: documents (lines), or TEXT_SAMPLE_CHARS characters after a newline (text)."""
        c, tokenizer, out = self.config, self.data.tokenizer, []
        for i in range(count):
            if self.data.format == "lines":
                text = sample(self.engine, tokenizer, rng, c.temperature, c.top_k)
                if show:
                    print(f"sample {i + 1:2d}: {text}", flush=True)
            else:
                if show:
                    print(f"--- sample {i + 1} ---", flush=True)
                text = continue_text(self.engine, tokenizer, rng, c.temperature, TEXT_SAMPLE_CHARS, c.top_k,
                                     on_text=(lambda ch: print(ch, end="", flush=True)) if show else None)
                if show:
                    print(flush=True)
            out.append(text)
        return out


def _recorded_data(given: str | None, path: Path) -> str | None:
    """How a checkpoint names its data: None for the packaged names, a URL as given, else the absolute path."""
    if given is None or is_url(given):
        return given
    return str(Path(path).resolve())


def _keep_count(keep: Any, planned: int) -> int:
    """--keep-snapshots: how many of the `planned` snapshots to keep (auto: all, the budget applies later)."""
    if keep in ("all", "auto"):
        return planned
    if keep == "none":
        return 0
    if isinstance(keep, int) and not isinstance(keep, bool):
        count = keep
    else:
        try:
            count = int(keep)
        except (TypeError, ValueError):
            count = -1
    if count < 0:
        raise UserError(f"--keep-snapshots must be a number, all, none or auto, got {keep!r}")
    return count


def _stats_every(value: Any) -> int | None:
    """--stats-every: None (off), 0 (auto) or a number of steps."""
    if value == "off":
        return None
    if value == "auto":
        return 0
    try:
        n = int(value) if not isinstance(value, (bool, float)) else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UserError(f"--stats-every must be a positive number of steps, auto or off, got {value!r}")
    return n

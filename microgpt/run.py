"""`microgpt train`: everything around the training loop of `microgpt.train`.

Loads and shuffles the documents, builds the tokenizer and the chosen engine, then runs the
loop while reporting progress, logging metrics, measuring validation loss and writing
checkpoints; Ctrl-C saves a checkpoint and says how to resume. At the end it prints samples.
In a run of several processes (torchrun) only rank 0 prints and writes files.

Exports: `configure`, `main`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError, NonFiniteState, is_checkpoint, load_checkpoint, save_checkpoint, snapshot_state
from .cli import add_config_arguments, config_from_args, config_overrides
from .config import TRAJECTORY_FIELDS, Config, flag_of
from .data import default_dataset, fingerprint, load_docs, shuffled, split_docs
from .engines import ENGINES, create_engine
from .engines.base import Engine
from .errors import UserError
from .metrics import MetricsWriter, check_writable
from .progress import Progress
from .sample import sample
from .tokenizer import Tokenizer
from .train import TrainingDiverged, train

DEFAULT_ENGINE = "numpy"
TORCH_OPTIONS = {"device": "auto", "dtype": "float64", "compile": False}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Train the book's GPT on a text file (one document per line; default: the names "
                          "dataset, downloaded once) and print samples. Defaults are the book's faithful run.")
    run = parser.add_argument_group("run")
    run.add_argument("--data", metavar="FILE", help="training text, one document per line "
                     "(default: names.txt, downloaded and cached on first use)")
    run.add_argument("--engine", choices=list(ENGINES), default=argparse.SUPPRESS,
                     help="numpy: fast, float64 (default); scalar: the same numbers, one scalar at a time "
                     "(the book engine); torch: PyTorch, batches, GPUs, torchrun")
    run.add_argument("--metrics", metavar="FILE", help="append one JSON object per step to FILE (JSON Lines)")
    run.add_argument("--out", metavar="DIR", help="write checkpoints to folder DIR")
    run.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                     help="with --out, checkpoint every N steps, and always at the end (default: 100)")
    run.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR, bit for bit")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    torch = parser.add_argument_group("torch engine")
    torch.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=argparse.SUPPRESS,
                       help="where the torch engine runs (default: auto = cuda, else mps, else cpu)")
    torch.add_argument("--dtype", choices=("float64", "float32", "bfloat16"), default=argparse.SUPPRESS,
                       help="the torch engine's precision (default: float64)")
    torch.add_argument("--compile", action="store_true", default=argparse.SUPPRESS,
                       help="torch.compile the torch engine's model")
    add_config_arguments(parser)


def _resolve(args: argparse.Namespace):
    """The config, engine name and data path of this run, new or resumed."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        config = checkpoint.config
        changed = {k: v for k, v in config_overrides(args).items()
                   if k in TRAJECTORY_FIELDS and getattr(config, k) != v}
        if changed:
            k = next(iter(changed))
            raise CheckpointError(f"{flag_of(k)} {changed[k]} does not match the checkpoint in {args.resume} "
                                  f"({getattr(config, k)}): a resumed run keeps its training settings; drop "
                                  f"{flag_of(k)} or start a new run with --out")
        config = config_from_args(args, base=config)
        engine = getattr(args, "engine", checkpoint.meta.get("engine", DEFAULT_ENGINE))
        data = args.data or checkpoint.meta.get("data")
    else:
        config = config_from_args(args)
        engine = getattr(args, "engine", DEFAULT_ENGINE)
        data = args.data
    if args.checkpoint_every < 1:
        raise UserError(f"--checkpoint-every must be a positive integer, got {args.checkpoint_every}")
    return config, engine, data, checkpoint


def _engine_options(args: argparse.Namespace, engine: str, checkpoint) -> dict:
    given = {k: getattr(args, k) for k in TORCH_OPTIONS if hasattr(args, k)}
    if engine != "torch":
        if given:
            raise UserError(f"--{next(iter(given))} applies to the torch engine only: add --engine torch or drop it")
        return {}
    # A resumed run keeps the device and precision it was started with, unless told otherwise.
    saved = checkpoint.meta.get("engine_options", {}) if checkpoint and checkpoint.meta.get("engine") == engine else {}
    return {**TORCH_OPTIONS, **saved, **given}


class _Interrupt:
    """Ctrl-C (or SIGTERM) during training finishes the current step, then checkpoints and exits
    128 + the signal's number (130 for Ctrl-C).

    Installed explicitly: a process started in the background of a non-interactive shell
    ignores SIGINT, and Python's default handler would never see it.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = 0  # the signal received, 0 for none
        self.in_loop = False
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.in_loop and not self.requested:
            self.requested = signum
        else:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def main(args: argparse.Namespace) -> int:
    config, engine_name, data, checkpoint = _resolve(args)
    options = _engine_options(args, engine_name, checkpoint)
    out = args.out or args.resume
    if args.out and is_checkpoint(args.out) and Path(args.out).resolve() != Path(args.resume or "").resolve():
        raise CheckpointError(f"{args.out} already holds a checkpoint: continue it with --resume {args.out}, "
                              "or pick another --out folder")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file: pass a folder for the checkpoints")
    if checkpoint is not None and args.metrics is None:
        args.metrics = checkpoint.meta.get("metrics")  # keep logging where the interrupted run did
    if args.metrics:
        check_writable(args.metrics)
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = print if is_main else (lambda *a, **k: None)

    # Chapter 2: the documents, shuffled by the first use of the one random generator.
    data_path = Path(data) if data else default_dataset()
    all_docs = load_docs(data_path)
    rng = random.Random(config.seed)
    docs = shuffled(all_docs, rng)
    train_docs, val_docs = split_docs(docs, config.val_fraction)
    tokenizer = Tokenizer.from_docs(docs)
    data_print = fingerprint(all_docs)
    if checkpoint is not None:
        if checkpoint.meta["data_fingerprint"] != data_print:
            raise CheckpointError(f"checkpoint {args.resume} was trained on other data than {data_path}: pass the "
                                  f"same --data as the original run ({checkpoint.meta.get('data')})")
        if checkpoint.vocab != tokenizer.chars:
            raise CheckpointError(f"checkpoint {args.resume} has another vocabulary than {data_path}: pass the same "
                                  "--data as the original run")
    say(f"num docs: {len(docs)}")
    say(f"vocab size: {tokenizer.vocab_size}")

    engine = create_engine(engine_name, config, tokenizer.vocab_size, rng, **options)
    extra_meta = {"data": str(data_path.resolve()), "engine_options": options,
                  "metrics": str(Path(args.metrics).resolve()) if args.metrics else None}
    try:
        return _run(args, config, engine, rng, tokenizer, train_docs, val_docs, data_path, data_print,
                    checkpoint, out, is_main, say, extra_meta)
    finally:
        engine.close()


def _run(args, config: Config, engine: Engine, rng: random.Random, tokenizer: Tokenizer, train_docs, val_docs,
         data_path: Path, data_print: str, checkpoint, out, is_main: bool, say, extra_meta: dict) -> int:
    start_step, elapsed_before = 0, 0.0
    if checkpoint is not None:
        checkpoint.restore(engine)
        rng.setstate(checkpoint.rng_state())
        start_step, elapsed_before = checkpoint.step, checkpoint.meta.get("elapsed", 0.0)
    say(f"num params: {engine.num_params}")
    if start_step:
        say(f"resuming from step {start_step} of {config.num_steps} ({out})")

    header = {"engine": engine.name, "config": config.to_dict(), "data": str(data_path),
              "vocab_size": tokenizer.vocab_size, "num_params": engine.num_params, "num_docs":
              len(train_docs) + len(val_docs), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    metrics = None
    if args.metrics and is_main:
        metrics = MetricsWriter(args.metrics, header, resume_step=start_step if checkpoint else None)
    progress = Progress(config.num_steps, start_step) if is_main and not args.quiet else None
    started = time.perf_counter()

    def snapshot(step: int):
        """The state to checkpoint after `step`; a diverged one stops the run before it is logged."""
        try:
            return snapshot_state(engine)
        except NonFiniteState as e:
            raise TrainingDiverged(step, f"the weights became infinite or NaN ({', '.join(e.names[:3])})") from None

    def checkpoint_now(step: int, state: dict) -> None:
        if out and is_main:
            save_checkpoint(out, engine, step, rng, tokenizer.chars, data_print, state=state,
                            extra={**extra_meta, "elapsed": elapsed_before + time.perf_counter() - started})

    last_saved = start_step
    interrupt = _Interrupt()

    val_loss = None  # the latest validation loss

    def on_step(step: int, loss: float, lr_t: float) -> bool:
        nonlocal last_saved, val_loss
        done = step + 1
        saving = out and (done % args.checkpoint_every == 0 or done == config.num_steps)
        # Checked first, so a step whose update broke the weights is not logged as good.
        state = snapshot(done) if saving and is_main else None
        record = {"step": done, "loss": loss, "lr": lr_t,
                  "time": round(elapsed_before + time.perf_counter() - started, 6)}
        if val_docs and ((config.eval_every and done % config.eval_every == 0) or done == config.num_steps):
            record["val_loss"] = val_loss = mean_token_loss(engine, tokenizer, val_docs)
            if progress and done < config.num_steps:
                progress.note(f"step {done:4d} | val loss {record['val_loss']:.4f}")
        if metrics:
            metrics.log(**record)
        if saving:
            # Written after the step is logged: a kill in between leaves a metrics file a step ahead
            # of the checkpoint, which a resume trims, never a checkpoint ahead of its metrics.
            checkpoint_now(done, state)
            last_saved = done
        if progress:
            progress.update(done, loss)
        return bool(interrupt.requested)

    interrupt.in_loop = True
    try:
        done = train(engine, train_docs, tokenizer, config, start_step, on_step, engine.rank, engine.world_size)
    except TrainingDiverged as e:
        interrupt.restore()
        if progress:
            progress.close()
        keep = f"; the last good checkpoint (step {last_saved}) is in {out}" if out and last_saved else ""
        fix = f"lower --lr (now {config.learning_rate})"
        if config.optimizer == "sgd":
            fix += " or use --optimizer adam"
        if not config.zero_grad:
            fix += " or drop --no-zero-grad (gradients never reset grow without bound)"
        print(f"microgpt: training diverged at step {e.step}: {e.reason}: {fix}{keep}", file=sys.stderr)
        return 1
    finally:
        interrupt.in_loop = False
        if metrics:
            metrics.close()
    if progress:
        progress.close()

    if done < config.num_steps:  # stopped by Ctrl-C or SIGTERM
        interrupt.restore()
        if out and is_main:
            if last_saved != done:
                try:
                    checkpoint_now(done, snapshot(done))
                except TrainingDiverged as e:
                    keep = (f"the last good checkpoint (step {last_saved}) is in {out}" if last_saved
                            else "nothing saved")
                    print(f"microgpt: interrupted at step {done}, where {e.reason}: lower --lr "
                          f"(now {config.learning_rate}); {keep}", file=sys.stderr)
                    return 1
            print(f"interrupted at step {done} of {config.num_steps}; checkpoint saved in {out}. "
                  f"Resume with: microgpt train --resume {out}"
                  + (f" --metrics {args.metrics}" if args.metrics else ""), file=sys.stderr)
        else:
            print(f"interrupted at step {done} of {config.num_steps}; nothing saved (pass --out DIR to "
                  "keep checkpoints)", file=sys.stderr)
        return 128 + interrupt.requested

    try:
        if val_loss is not None:
            say(f"val loss: {val_loss:.4f} ({len(val_docs)} documents)")
        # Chapter 6: new documents from the trained model.
        if is_main and config.num_samples:
            say("--- samples ---")
            for i in range(config.num_samples):
                say(f"sample {i + 1:2d}: {sample(engine, tokenizer, rng, config.temperature, config.top_k)}")
                sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted while sampling", file=sys.stderr)
        return 130
    finally:
        interrupt.restore()
    return 0


def mean_token_loss(engine: Engine, tokenizer: Tokenizer, docs: list[str]) -> float:
    """Mean cross-entropy per predicted token over `docs` (nats), as the training loss counts them."""
    total, count = 0.0, 0
    for doc in docs:
        tokens = tokenizer.example(doc)
        n = min(engine.config.block_size, len(tokens) - 1)
        total += engine.evaluate(tokens) * n
        count += n
    return total / count if count else math.nan


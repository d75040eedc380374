"""`microgpt sample` and `microgpt eval`: using a trained model from its checkpoint.

Sampling is chapter 6; evaluation measures the loss on documents, ideally ones the model never
trained on. Both say what the model learned: how many samples are new names (not documents of
the training data), how many repeat each other, and how long they are against the data's. A
model trained on a text stream continues a prompt instead, printing characters as they come.

Exports: `configure`, `main`, `novelty`, `load_model`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from typing import Any

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .cli import engine_arguments
from .config import Config, ConfigError
from .data import Dataset, prepare
from .engines import create_engine, engine_options
from .engines.base import Engine, param_shapes
from .errors import UserError
from .guard import check_memory
from .sample import SamplingError, continue_text, default_prompt, sample
from .tokenizer import Tokenizer, TokenizerError
from .train import mean_loss


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (train --out DIR)")
    group = parser.add_argument_group("engine")
    engine_arguments(group, parser, default="numpy")
    parser.add_argument("--data", metavar="FILE|URL", help="documents to evaluate on / compare samples with "
                        "(default: the checkpoint's training data)")
    parser.add_argument("--num-samples", type=int, default=None, metavar="N",
                        help="how many to sample (default: the checkpoint's, 20 in the book; text mode: 1)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature, at least 0.01 (default: the checkpoint's, 0.5 in the book)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: continue the "
                        "checkpoint's random generator, so a finished run's samples come out again)")
    if name == "sample":
        parser.description = ("Sample new documents from a checkpoint (chapter 6); from a text-mode checkpoint, "
                              "continue a prompt, printing characters as they come.")
        parser.add_argument("--top-k", type=int, default=None, metavar="K",
                            help="draw only among the K likeliest tokens (default: the checkpoint's, 0 = all)")
        parser.add_argument("--prompt", default=None, metavar="TEXT", help="start every sample with TEXT (text mode: "
                            "the text to continue; default: a newline)")
        parser.add_argument("--max-tokens", type=int, default=500, metavar="N",
                            help="text mode: characters to generate after the prompt (default: 500)")
        parser.add_argument("--snapshot", type=int, default=None, metavar="STEP",
                            help="sample from the weights kept at training step STEP (train --out keeps them at "
                            "step 0 and at checkpoints); give --seed with it")
    else:
        parser.description = ("Mean per-token loss (nats) and perplexity of a checkpoint over a dataset's "
                              "documents, beside the uniform-guess baseline ln(vocab_size) (chapter 7: evaluation); "
                              "then it draws samples (--num-samples, --temperature, --seed) and says how many are "
                              "new documents, not copies of the training data.")


def load_model(checkpoint: Checkpoint, engine_name: str = "numpy", options: dict[str, Any] | None = None,
               step: int | None = None) -> tuple[Engine, Tokenizer]:
    """An engine holding the checkpoint's weights (or those of snapshot `step`), and its tokenizer."""
    config = checkpoint.config
    tokenizer = Tokenizer(checkpoint.vocab)
    # The weights are read and checked against the config's shapes before a model of that size is
    # built: a config edited to a huge model is refused, not allocated.
    check_memory(config, tokenizer.vocab_size, engine_name)
    weights = checkpoint.snapshot(checkpoint.step if step is None else step, param_shapes(config, tokenizer.vocab_size))
    engine = create_engine(engine_name, config, tokenizer.vocab_size, random.Random(config.seed), **(options or {}))
    engine.load_state_dict(weights)
    return engine, tokenizer


def _training_data(checkpoint: Checkpoint, explicit: str | None) -> Dataset | None:
    """--data if given, else the checkpoint's own data when it is still there and unchanged (else None)."""
    config = checkpoint.config
    if explicit is not None:
        return prepare(config, explicit, checkpoint.vocab)[0]
    try:
        dataset = prepare(config, checkpoint.meta.get("data"), checkpoint.vocab)[0]
    except UserError:
        return None
    return dataset if dataset.fingerprint == checkpoint.meta["data_fingerprint"] else None


def novelty(samples: list[str], docs: list[str]) -> dict:
    """How many samples are new documents, how many repeat another sample, and mean lengths."""
    known = set(docs)
    return {
        "new": sum(s not in known for s in samples),
        "repeats": len(samples) - len(set(samples)),
        "mean_len": sum(map(len, samples)) / len(samples) if samples else 0.0,
        "data_mean_len": sum(map(len, docs)) / len(docs),
    }


def _sampling(args: argparse.Namespace, config: Config, checkpoint: Checkpoint) -> tuple[float, int, random.Random]:
    temperature = config.temperature if args.temperature is None else args.temperature
    top_k = config.top_k if getattr(args, "top_k", None) is None else args.top_k
    try:
        Config(temperature=temperature, top_k=top_k, seed=args.seed or 0).validate()
    except ConfigError as e:
        raise UserError(str(e)) from None
    if args.num_samples is not None and args.num_samples < 0:
        raise UserError(f"--num-samples must be 0 or more, got {args.num_samples}")
    if args.seed is None and getattr(args, "snapshot", None) is not None:
        raise UserError("--snapshot samples from a snapshot's weights: give --seed too (the checkpoint's generator "
                        "belongs to its latest step)")
    rng = random.Random(args.seed)
    if args.seed is None:
        rng.setstate(checkpoint.rng_state())
    return temperature, top_k, rng


def _report_novelty(samples: list[str], data: Dataset | None) -> None:
    if not samples:
        return
    if data is None:
        print("(training data not found or changed: pass --data FILE to see how many samples are new)")
        return
    if data.format == "text":
        lines = [line for s in samples for line in s.split("\n") if line.strip()]
        known = {line for line in data.tokenizer.decode(data.train_ids).split("\n")}
        new = sum(line not in known for line in lines)
        print(f"new: {new} of {len(lines)} sampled lines are not lines of {data.path.name}")
        return
    n = novelty(samples, data.docs)
    print(f"new: {n['new']} of {len(samples)} samples are not documents of {data.path.name}; "
          f"{n['repeats']} repeat an earlier sample; mean length {n['mean_len']:.2f} "
          f"(data: {n['data_mean_len']:.2f})")


def _checked_draw(checkpoint: Checkpoint, draw: Any) -> str:
    """A sample, or the one-line error that names the checkpoint whose weights cannot be sampled."""
    try:
        return draw()
    except SamplingError as e:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {e}") from None


def main(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    options = engine_options(args, args.engine)
    if args.command == "eval":
        engine, tokenizer = load_model(checkpoint, args.engine, options)
        try:
            return _eval(args, checkpoint, engine)
        finally:
            engine.close()
    return _sample(args, checkpoint, options)


def _sample(args: argparse.Namespace, checkpoint: Checkpoint, options: dict[str, Any]) -> int:
    config = checkpoint.config
    temperature, top_k, rng = _sampling(args, config, checkpoint)
    text_mode = config.data_format == "text"
    data = None if text_mode else _training_data(checkpoint, args.data)  # a bad --data is refused first
    engine, tokenizer = load_model(checkpoint, args.engine, options, args.snapshot)
    prompt = args.prompt if args.prompt is not None else (default_prompt(tokenizer) if text_mode else "")
    try:
        try:
            tokenizer.encode(prompt)
        except TokenizerError as e:
            raise UserError(f"--prompt {prompt!r}: {e}") from None
        count = args.num_samples if args.num_samples is not None else (1 if text_mode else config.num_samples)
        if text_mode:
            if not prompt:
                raise UserError("--prompt is empty: give some text to continue, or drop --prompt (a newline)")
            if args.max_tokens < 1:
                raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}")
            if len(prompt) > config.block_size:
                print(f"note: the prompt is {len(prompt)} characters; the model sees its last {config.block_size}",
                      file=sys.stderr)
            for i in range(count):
                if count > 1:
                    print(f"--- sample {i + 1} ---", flush=True)
                sys.stdout.write(prompt)
                _checked_draw(checkpoint, lambda: continue_text(
                    engine, tokenizer, rng, temperature, args.max_tokens, top_k, prompt,
                    on_text=lambda ch: (sys.stdout.write(ch), sys.stdout.flush())))
                print(flush=True)
            return 0
        if len(prompt) >= config.block_size:
            raise UserError(f"--prompt is {len(prompt)} characters; the model sees at most "
                            f"{config.block_size}: use a shorter prompt")
        samples = []
        for i in range(count):
            samples.append(_checked_draw(checkpoint, lambda: sample(engine, tokenizer, rng, temperature, top_k,
                                                                     prompt)))
            print(f"sample {i + 1:2d}: {samples[-1]}", flush=True)  # as soon as it is drawn
        _report_novelty(samples, data)
        return 0
    finally:
        engine.close()


def _eval(args: argparse.Namespace, checkpoint: Checkpoint, engine: Engine) -> int:
    config = checkpoint.config
    data = _training_data(checkpoint, args.data)
    if data is None:
        raise CheckpointError(f"the training data of {args.checkpoint} ({checkpoint.meta.get('data') or 'names'}) "
                              "is not there or has changed: pass --data FILE")
    if data.format == "lines":
        # train_docs + val_docs is docs in order, so a bad character is named where it first occurs.
        parts = [("all", data.docs)] if args.data else [("train", data.train_docs), ("val", data.val_docs)]
        try:
            splits = [(name, [data.tokenizer.example(d) for d in docs], f"{len(docs)} documents")
                      for name, docs in parts if docs]
        except TokenizerError as e:
            raise UserError(f"{data.path}: {e}") from None
    else:
        parts = ([("all", data.train_ids + data.val_ids)] if args.data
                 else [("train", data.train_ids), ("val", data.val_ids)])
        splits = [(name, data.windows_from(part, name), f"{config.eval_windows} windows")
                  for name, part in parts if part]
    baseline = math.log(data.tokenizer.vocab_size)
    print(f"checkpoint: {args.checkpoint} (step {checkpoint.step}, trained by the {checkpoint.engine} engine, "
          f"evaluated by the {engine.name} engine)")
    for name, examples, what in splits:
        loss = mean_loss(engine, examples)
        print(f"{name}: {what} | loss {loss:.4f} nats/token | perplexity {math.exp(loss):.3f} | "
              f"uniform guess ln({data.tokenizer.vocab_size}) = {baseline:.4f}")
    if config.data_format == "lines":
        temperature, top_k, rng = _sampling(args, config, checkpoint)
        count = config.num_samples if args.num_samples is None else args.num_samples
        samples = [_checked_draw(checkpoint, lambda: sample(engine, data.tokenizer, rng, temperature, top_k))
                   for _ in range(count)]
        _report_novelty(samples, data)
    return 0

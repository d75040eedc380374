"""`microgpt sample` and `microgpt eval`: using a trained model from its checkpoint.

Sampling is chapter 6; evaluation measures the loss on documents, ideally ones the model never
trained on. Both say what the model learned: how many samples are new names (not documents of
the training data), how many repeat each other, and how long they are against the data's.

Exports: `configure`, `main`, `novelty`.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError
from .data import fingerprint, load_docs, shuffled, split_docs
from .engines import ENGINES, create_engine
from .errors import UserError
from .sample import sample
from .tokenizer import Tokenizer, TokenizerError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (train --out DIR)")
    parser.add_argument("--engine", choices=list(ENGINES), default="numpy",
                        help="engine to compute with; any engine reads any checkpoint (default: numpy)")
    parser.add_argument("--data", metavar="FILE", help="documents to evaluate on / compare samples with "
                        "(default: the checkpoint's training data)")
    parser.add_argument("--num-samples", type=int, default=20, metavar="N", help="how many to sample (default: 20)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature > 0 (default: the checkpoint's, 0.5 in the book)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: continue the "
                        "checkpoint's random generator, so a finished run's samples come out again)")
    if name == "sample":
        parser.description = "Sample new documents from a checkpoint (chapter 6)."
        parser.add_argument("--top-k", type=int, default=None, metavar="K",
                            help="draw only among the K likeliest tokens (default: the checkpoint's, 0 = all)")
        parser.add_argument("--prompt", default="", metavar="PREFIX", help="start every sample with PREFIX")
    else:
        parser.description = ("Mean per-token loss (nats) and perplexity of a checkpoint over a dataset's "
                              "documents, beside the uniform-guess baseline ln(vocab_size) (chapter 7: evaluation).")


def _load(args: argparse.Namespace):
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint.config
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = create_engine(args.engine, config, tokenizer.vocab_size, random.Random(config.seed))
    checkpoint.restore(engine, with_optimizer=False)
    return checkpoint, config, tokenizer, engine


def _training_docs(checkpoint, explicit: str | None):
    """(documents, where from): --data if given, else the checkpoint's dataset when it is still there."""
    path = explicit or checkpoint.meta.get("data")
    if not path:
        return None, None
    if not explicit and not Path(path).is_file():
        return None, None
    docs = load_docs(path)
    if not explicit and fingerprint(docs) != checkpoint.meta["data_fingerprint"]:
        return None, None  # the file changed since training: not the training data any more
    return docs, path


def novelty(samples: list[str], docs: list[str]) -> dict:
    """How many samples are new documents, how many repeat another sample, and mean lengths."""
    known = set(docs)
    return {
        "new": sum(s not in known for s in samples),
        "repeats": len(samples) - len(set(samples)),
        "mean_len": sum(map(len, samples)) / len(samples) if samples else 0.0,
        "data_mean_len": sum(map(len, docs)) / len(docs),
    }


def _draw(args, checkpoint, config, tokenizer, engine, top_k: int = 0, prompt: str = "") -> list[str]:
    temperature = config.temperature if args.temperature is None else args.temperature
    if not temperature > 0:
        raise ConfigError(f"--temperature must be greater than 0, got {temperature} (try 0.5)")
    if args.num_samples < 0:
        raise UserError(f"--num-samples must be 0 or more, got {args.num_samples}")
    rng = random.Random(args.seed)
    if args.seed is None:
        rng.setstate(checkpoint.rng_state())
    return [sample(engine, tokenizer, rng, temperature, top_k, prompt) for _ in range(args.num_samples)]


def _report_novelty(samples: list[str], docs: list[str] | None, source: str | None) -> None:
    if not samples:
        return
    if docs is None:
        print("(training data not found: pass --data FILE to see how many samples are new)")
        return
    n = novelty(samples, docs)
    print(f"new: {n['new']} of {len(samples)} samples are not documents of {source}; "
          f"{n['repeats']} repeat an earlier sample; mean length {n['mean_len']:.2f} "
          f"(data: {n['data_mean_len']:.2f})")


def main(args: argparse.Namespace) -> int:
    checkpoint, config, tokenizer, engine = _load(args)
    try:
        if args.command == "sample":
            top_k = config.top_k if args.top_k is None else args.top_k
            if top_k < 0:
                raise UserError(f"--top-k must be 0 (all) or more, got {top_k}")
            try:
                tokenizer.encode(args.prompt)
            except TokenizerError as e:
                raise UserError(f"--prompt {args.prompt!r}: {e}") from None
            if len(args.prompt) >= config.block_size:
                raise UserError(f"--prompt is {len(args.prompt)} characters; the model sees at most "
                                f"{config.block_size}: use a shorter prompt")
            samples = _draw(args, checkpoint, config, tokenizer, engine, top_k, args.prompt)
            for i, s in enumerate(samples):
                print(f"sample {i + 1:2d}: {s}")
            docs, source = _training_docs(checkpoint, args.data)
            _report_novelty(samples, docs, source)
            return 0
        return _eval(args, checkpoint, config, tokenizer, engine)
    finally:
        engine.close()


def _eval(args, checkpoint, config, tokenizer, engine) -> int:
    from .run import mean_token_loss

    docs, source = _training_docs(checkpoint, args.data)
    if docs is None:
        raise CheckpointError(f"the training data of {args.checkpoint} ({checkpoint.meta.get('data')}) is not "
                              "there or has changed: pass --data FILE")
    try:
        [tokenizer.encode(d) for d in docs]
    except TokenizerError as e:
        raise UserError(f"{source}: {e}") from None
    if args.data:
        splits = [("all", docs)]
    else:  # the checkpoint's own data: report its training and held-out parts apart
        train_docs, val_docs = split_docs(shuffled(docs, random.Random(config.seed)), config.val_fraction)
        splits = [("train", train_docs)] + ([("val", val_docs)] if val_docs else [])
    baseline = math.log(tokenizer.vocab_size)
    print(f"checkpoint: {args.checkpoint} (step {checkpoint.step}, engine {args.engine})")
    for name, part in splits:
        loss = mean_token_loss(engine, tokenizer, part)
        print(f"{name}: {len(part)} documents | loss {loss:.4f} nats/token | perplexity {math.exp(loss):.3f} | "
              f"uniform guess ln({tokenizer.vocab_size}) = {baseline:.4f}")
    samples = _draw(args, checkpoint, config, tokenizer, engine)
    _report_novelty(samples, docs, source)
    return 0

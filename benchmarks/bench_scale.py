"""The book's GPT at a larger scale: character-level tinyshakespeare, engines side by side.

    python benchmarks/bench_scale.py [--steps 200] [--device cpu|cuda|mps] [--dtypes float32,float64]

Model: n_layer 4, n_head 4, n_embd 128, block_size 64 (about 0.8 M parameters), batch_size 12,
Adam with the book's settings and linear decay over --steps, after a linear warmup over the
first 10% of them (chapter 7's --warmup-steps): at this width the book's lr 0.01 from step 0
throws the loss from 6.6 up to about 30 in the first steps, and the warmup avoids that. Each
engine starts from the same weights (same seed) and sees the same batches; the script prints
steps/s (the first, warm-up step not counted), tokens/s (predicted tokens per second: 12 x 64
per step) and the validation loss after training, one line per engine: the torch engine in each
--dtypes on --device, and the numpy engine (float64, CPU) when it is importable.

Documents. The book trains on one line per document, but Shakespeare's lines are short and the
line breaks are part of the text, so the script builds the documents itself instead of using the
line-based loader (which would drop every "\\n"): the whole file is cut into consecutive,
non-overlapping chunks of block_size = 64 characters, newlines kept (the vocabulary is every
character of the file, "\\n" included). The Tokenizer wraps each chunk in BOS, so an example is
[BOS] + 64 characters + [BOS] and its 64 predictions are: the first character after BOS, then each
next character from the ones before it within the chunk. The chunks are shuffled once with the
seed; the last 10% are held out, and the validation loss is the mean loss over the first
--val-docs of them (each chunk's mean cross-entropy, as in training).

Threads: PyTorch uses one CPU thread here unless --threads says otherwise (0 = PyTorch's
default). The numpy engine computes with single-threaded BLAS too, so the comparison is core
for core, and on a shared machine a thread pool waiting for a busy core costs more than it saves.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

# Single-threaded BLAS for the numpy engine; it must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from microgpt.config import Config  # noqa: E402
from microgpt.engines import create_engine  # noqa: E402
from microgpt.errors import UserError  # noqa: E402
from microgpt.tokenizer import Tokenizer  # noqa: E402
from microgpt.train import train  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def chunk_documents(text: str, length: int) -> list[str]:
    """Consecutive, non-overlapping chunks of `length` characters; a shorter tail is dropped."""
    return [text[i:i + length] for i in range(0, len(text) - length + 1, length)]


def run_engine(name: str, options: dict, config: Config, train_docs: list[str], val_docs: list[str],
               tokenizer: Tokenizer) -> dict:
    """Train one engine for config.num_steps; time the steps after the first (warm-up) one."""
    engine = create_engine(name, config, tokenizer.vocab_size, random.Random(config.seed), **options)
    marks: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float, lr: float) -> bool:
        marks.append(time.perf_counter())
        losses.append(loss)
        return False

    start = time.perf_counter()
    train(engine, train_docs, tokenizer, config, on_step=on_step)
    steps_timed = len(marks) - 1
    seconds = marks[-1] - marks[0] if steps_timed else marks[0] - start
    steps_per_s = (steps_timed or 1) / seconds
    t0 = time.perf_counter()
    val = sum(engine.evaluate(tokenizer.example(doc)) for doc in val_docs) / len(val_docs)
    eval_s = time.perf_counter() - t0
    engine.close()
    return {"steps_per_s": steps_per_s, "train_s": marks[-1] - start, "eval_s": eval_s, "val": val,
            "last_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="a text file (default: tinyshakespeare.txt)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per engine (default 200)")
    parser.add_argument("--device", default="cpu", help="the torch engine's device: cpu, cuda, mps (default cpu)")
    parser.add_argument("--dtypes", default="float32,float64", help="the torch engine's dtypes, comma-separated")
    parser.add_argument("--val-docs", type=int, default=200, help="held-out chunks to evaluate (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (0 = PyTorch's default)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy engine")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch  # the benchmark is about the torch engine: it needs torch installed

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = Config(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, num_steps=args.steps,
                    warmup_steps=args.steps // 10, seed=args.seed)
    text = Path(args.data).read_text(encoding="utf-8")
    docs = chunk_documents(text, config.block_size)
    random.Random(config.seed).shuffle(docs)
    n_val = len(docs) // 10
    train_docs, val_docs = docs[:-n_val], docs[-n_val:][:args.val_docs]
    tokenizer = Tokenizer(text)
    tokens_per_step = config.batch_size * config.block_size
    print(f"{len(text):,} characters, vocab {tokenizer.vocab_size}, {len(train_docs):,} training and {n_val:,} "
          f"held-out chunks of {config.block_size} (evaluating {len(val_docs)}); "
          f"{args.steps} steps of {config.batch_size} x {config.block_size} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")

    runs = [("torch", {"device": args.device, "dtype": dtype}) for dtype in args.dtypes.split(",") if dtype]
    if not args.no_numpy:
        try:
            import microgpt.engines.numpy_engine  # noqa: F401
        except ImportError as e:
            print(f"numpy engine skipped: it cannot be imported ({e})")
        else:
            runs.append(("numpy", {}))

    uniform = math.log(tokenizer.vocab_size)
    print(f"(a uniform guess scores {uniform:.3f})")
    print(f"{'engine':<8}{'dtype':<10}{'device':<8}{'steps/s':>9}{'tokens/s':>11}{'train s':>9}"
          f"{'last loss':>11}{'val loss':>10}")
    for name, options in runs:
        try:
            result = run_engine(name, options, config, train_docs, val_docs, tokenizer)
        except UserError as e:
            print(f"{name:<8}{options.get('dtype', 'float64'):<10}skipped: {e}")
            continue
        device = options.get("device", "cpu")
        print(f"{name:<8}{options.get('dtype', 'float64'):<10}{device:<8}{result['steps_per_s']:>9.2f}"
              f"{result['steps_per_s'] * tokens_per_step:>11,.0f}{result['train_s']:>9.1f}"
              f"{result['last_loss']:>11.4f}{result['val']:>10.4f}", flush=True)


if __name__ == "__main__":
    main()

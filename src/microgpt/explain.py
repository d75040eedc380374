"""`microgpt explain`: a whole training run from the inside, on one page that opens from disk.

The book's chapters, watched on a real run: the loss falling below the uniform guess (chapter 5),
the samples turning from noise into names the data never held (chapter 6), one prediction and
its attention taken apart (chapter 4), temperature and top-k reshaping the next-token
distribution (chapter 6), and one training step under the microscope: the graph it built, each
matrix's gradient, and Adam's update against the learning rate (5.3-5.8). A step slider moves
the prediction, attention and sampling panels through the weights kept during training.

The page computes predictions and samples itself, with the book's gpt() and Python's Mersenne
Twister written again in JavaScript (`web/model.js`, `web/random.js`), over the snapshots'
weights embedded as base64 (float64; float32 for models above FLOAT32_ABOVE parameters), so it
draws exactly what `microgpt sample` prints. Everything is inlined: the scripts, the styles, the
charting library (uPlot, `web/vendor/`) and the data; the page makes no request at all.

Exports: `configure`, `main`, `page_data`, `render`, `choose_snapshots`, `graph_counts`, `encode_floats`,
`sample_marks`, `PAGE_BUDGET`, `FLOAT32_ABOVE`, `TEXT_SAMPLE_TOKENS`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import random
import re
import shlex
import time
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import Checkpoint, load_checkpoint
from .config import MAX_SEED, Config
from .data import Dataset, batch_docs, prepare, write_atomic
from .engines.base import Engine, Layout, param_shapes
from .errors import UserError
from .guard import check_output_file
from .metrics import Metrics, list_runs, read_metrics
from .plotting import WINDOW
from .sample import continue_text, default_prompt, sample
from .tokenizer import Tokenizer

PAGE_BUDGET = 25_000_000  # bytes: the most a page may weigh; a browser still opens it in a few seconds
DEFAULT_PAGE = 10_000_000  # bytes the snapshots may bring by default; --snapshots K goes up to PAGE_BUDGET
FLOAT32_ABOVE = 1_000_000  # parameters: larger models are embedded in single precision...
LARGE_SNAPSHOTS = 3  # ...and with this many snapshots by default
STATS_ROWS = 2000  # steps of matrix statistics kept at most, evenly spaced
DOCS_BUDGET = 4_000_000  # characters of training documents (or lines) embedded to judge samples copy-or-new
WINDOWS_BUDGET = 2_000_000  # characters of text-mode training windows embedded for the loss chart's hover
TEXT_SAMPLE_TOKENS = 200  # characters per text-mode sample (the page draws them in JavaScript, one by one)
GRAPH_PARAMS = 50_000  # above this many parameters, building even 3 positions of the scalar graph is too slow
SCRIPTS = ("vendor/uPlot.iife.min.js", "random.js", "model.js", "explain.js")
STYLES = ("vendor/uPlot.min.css", "explain.css")


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Write one HTML page that shows a training run from the inside: the loss (chapter 5), "
                          "samples through training (chapter 6), one prediction and its attention (chapter 4), "
                          "temperature and top-k, and one step under the microscope (chapter 5.3-5.8). It opens "
                          "from disk, with no network.")
    parser.add_argument("dir", metavar="DIR", help="a checkpoint folder (train --out DIR), with the snapshots and "
                        "the metrics its run kept")
    parser.add_argument("-o", "--output", metavar="FILE", help="the page to write (default: DIR/explain.html)")
    parser.add_argument("--snapshots", type=int, default=None, metavar="K",
                        help="embed the weights of K snapshots, evenly spaced from step 0 to the last (default: "
                        f"all that fit {DEFAULT_PAGE // 10**6} MB; {LARGE_SNAPSHOTS} for models above "
                        f"{FLOAT32_ABOVE:,} parameters, which are embedded as float32)")
    parser.add_argument("--metrics", metavar="FILE", help="the run's metrics file (default: the one the checkpoint "
                        "names, DIR/metrics.jsonl)")
    parser.add_argument("--data", metavar="FILE|URL", help="the run's training data (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="seed of the samples drawn at each "
                        "snapshot, as `microgpt sample --snapshot STEP --seed S` (default: the run's seed)")


# --- what the page embeds --------------------------------------------------------------------


def encode_floats(values: Any, dtype: str = "float64") -> str:
    """base64 of the values as little-endian float64 (or float32): the page decodes them with a DataView."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8" if dtype == "float64" else "<f4")
                            .tobytes()).decode("ascii")


def _finite(x: float) -> float | None:
    """JSON has no inf or NaN: a diverged step's loss becomes null, a gap in the chart."""
    return x if math.isfinite(x) else None


def choose_snapshots(available: list[int], k: int) -> list[int]:
    """k steps of `available` (sorted), evenly spaced, always the first and the last."""
    if k >= len(available):
        return list(available)
    if k == 1:
        return [available[-1]]
    return sorted({available[round(i * (len(available) - 1) / (k - 1))] for i in range(k)})


def _b64_size(n_bytes: int) -> int:
    return (n_bytes + 2) // 3 * 4


def graph_counts(config: Config, vocab_size: int) -> dict[str, Any]:
    """5.3: the nodes one training step's graph holds, by operation, for every document length 1..block_size.

    The operations depend only on the model's shape and the number of positions: every position
    repeats the same layers, and its attention looks back at each earlier position, so each count
    is a quadratic in the positions n. The book engine builds the graphs of 1, 2 and 3 positions
    and the quadratic through them gives the rest (Newton's forward differences, exact in
    integers). Leaves are split: constants depend on n alone; the parameters a step reaches also
    depend on which tokens it reads, so the page counts those from the document itself.
    """
    from .autograd import topological_order
    from .graph import build, operation_counts

    shapes = param_shapes(config, vocab_size)
    num_params = Layout(shapes).total
    if num_params > GRAPH_PARAMS:
        return {"note": f"the book engine would build about {_graph_estimate(config, vocab_size):,} Values per "
                        f"position for this model ({num_params:,} parameters); too many to build here"}
    measured = []
    for n in range(1, min(3, config.block_size) + 1):
        tokens = [vocab_size - 1] + [0] * (n - 1) + [vocab_size - 1]  # which tokens does not change the operations
        loss, params = build(config, vocab_size, tokens, config.seed)
        leaves = {id(v) for rows in params.values() for row in rows for v in row}
        measured.append(operation_counts(topological_order(loss), leaves))
    ops = sorted({k for counts in measured for k in counts if k != "parameters"},
                 key=lambda k: (k == "constants", -measured[-1][k], k))
    by_length = []
    for n in range(1, config.block_size + 1):
        row = []
        for op in ops:
            f = [counts.get(op, 0) for counts in measured]
            if n <= len(f):
                row.append(f[n - 1])
            else:  # f1 + (n-1) Δ1 + (n-1)(n-2)/2 Δ2
                row.append(f[0] + (n - 1) * (f[1] - f[0]) + (n - 1) * (n - 2) // 2 * (f[2] - 2 * f[1] + f[0]))
        by_length.append(row)
    C = config.n_embd
    return {"ops": ops, "by_length": by_length,
            # lm_head, attention and MLP matrices are reached whole; wte and wpe by the rows a document reads
            "other_params": num_params - shapes["wte"][0] * C - shapes["wpe"][0] * C}


def _graph_estimate(config: Config, vocab_size: int) -> int:
    """About two Values (a product and a sum) per multiply-add of one position's forward pass."""
    C = config.n_embd
    return 2 * (config.n_layer * 12 * C * C + vocab_size * C)


def sample_marks(texts: list[str], text_mode: bool, train: set[str], held_out: set[str]) -> list[Any]:
    """Each sample judged copy-or-new: lines mode, "copy" (a training document), "held-out" (a validation
    document the model never trained on) or "new"; text mode, per line: [line, "copy" | "new" | "blank"]."""
    if not text_mode:
        return ["copy" if t in train else "held-out" if t in held_out else "new" for t in texts]
    return [[[line, "blank" if not line.strip() else "copy" if line in train else "new"] for line in t.split("\n")]
            for t in texts]


def _joined(items: set[str], budget: int) -> str | None:
    """A set of documents as one string, one per line (None when larger than the budget)."""
    text = "\n".join(sorted(items))
    return text if len(text) <= budget else None


# --- gathering the run -------------------------------------------------------------------------


def _dataset(checkpoint: Checkpoint, given: str | None) -> Dataset:
    """The run's data, as training saw it; refused when it is missing or changed, naming --data."""
    spec = given if given is not None else checkpoint.meta.get("data")
    try:
        dataset = prepare(checkpoint.config, spec, checkpoint.vocab)[0]
    except UserError:
        if given is not None:
            raise
        raise UserError(f"the training data of {checkpoint.path} ({spec or 'the names dataset'}) is not there or "
                        "cannot be read: pass --data FILE with the run's data") from None
    if dataset.fingerprint != checkpoint.meta["data_fingerprint"]:
        raise UserError(f"{dataset.path} is not the data checkpoint {checkpoint.path} was trained on: pass --data "
                        f"with the run's training data ({checkpoint.meta.get('data') or 'the names dataset'})")
    return dataset


def _metrics(checkpoint: Checkpoint, given: str | None) -> Metrics:
    """The run's steps from its metrics file: the run of the checkpoint's run id."""
    meta = checkpoint.meta
    if given is not None:
        path = Path(given)
    elif meta.get("metrics"):
        path = checkpoint.path / meta["metrics"]
    elif meta.get("metrics_hint"):
        path = Path(meta["metrics_hint"])
    else:
        raise UserError(f"checkpoint {checkpoint.path} names no metrics file (it was trained with --metrics "
                        "elsewhere, or without): pass --metrics FILE")
    if not path.is_file():
        raise UserError(f"metrics file {path} is not there: pass --metrics FILE with the file the run wrote")
    metrics = read_metrics(path, details=True)  # the last run: usually the checkpoint's own
    run_id = meta.get("run_id")
    if not run_id or metrics.run.get("run_id") == run_id:
        return metrics
    index = next((r.index for r in list_runs(path) if r.run_id == run_id), None)
    if index is None:
        raise UserError(f"{path} holds no run {run_id} (the checkpoint's): pass --metrics with the file this run "
                        "wrote")
    return read_metrics(path, run=index, details=True)


def _step_documents(dataset: Dataset, metrics: Metrics, config: Config) -> dict[str, Any]:
    """What each logged step trained on: lines, the documents (the page picks step s's); text, the windows."""
    last = max(metrics.step) if metrics.step else 0
    if dataset.format == "lines":
        B, docs = config.batch_size, dataset.train_docs
        first = [batch_docs(docs, 0, B)[0]] if docs else []
        return {"train_docs": docs[:min(len(docs), last * B)] or first, "num_train_docs": len(docs),
                "batch_size": B}
    span = config.block_size + 1
    windows = dict(metrics.windows)
    stride = max(1, math.ceil(len(windows) * span / WINDOWS_BUDGET))
    kept = {s for i, s in enumerate(sorted(windows)) if i % stride == 0}
    tok = dataset.tokenizer
    return {"windows": [tok.decode(dataset.train_ids[windows[s]:windows[s] + span]) if s in kept else None
                        for s in metrics.step], "batch_size": config.batch_size}


def _stats(metrics: Metrics, names: list[str]) -> dict[str, Any] | None:
    """Per logged step and matrix: [gradient norm, weight norm, update norm, update / weight], as float32."""
    import numpy as np

    rows = [(step, stats) for step, stats in metrics.stats if all(n in stats for n in names)]
    if not rows:
        return None
    if len(rows) > STATS_ROWS:
        rows = [rows[round(i * (len(rows) - 1) / (STATS_ROWS - 1))] for i in range(STATS_ROWS)]
    values = np.array([[stats[n] for n in names] for _, stats in rows], dtype=np.float64)  # (steps, matrices, 4)
    values[~np.isfinite(values)] = np.nan
    return {"steps": [s for s, _ in rows], "values": encode_floats(values.ravel(), "float32")}


def _draw(engine: Engine, tokenizer: Tokenizer, rng: random.Random, config: Config, count: int) -> list[str]:
    """`count` samples exactly as `microgpt sample` draws them: documents, or continuations of the
    default prompt (a newline where the text has one)."""
    if config.data_format == "text":
        return [continue_text(engine, tokenizer, rng, config.temperature, TEXT_SAMPLE_TOKENS, config.top_k)
                for _ in range(count)]
    return [sample(engine, tokenizer, rng, config.temperature, config.top_k) for _ in range(count)]


def _snapshot_count(requested: int | None, available: int, per_snapshot: int, base: int, dtype: str,
                    num_params: int) -> int:
    """How many snapshots the page embeds: --snapshots K if it fits PAGE_BUDGET; by default, for small
    models every snapshot while they stay under DEFAULT_PAGE, for large ones LARGE_SNAPSHOTS."""
    fit = max(0, (PAGE_BUDGET - base) // per_snapshot)
    budget = f"{PAGE_BUDGET // 10**6} MB"
    if fit < 1:
        raise UserError(f"the weights of this model ({num_params:,} parameters) take {per_snapshot / 1e6:.0f} MB "
                        f"even as {dtype}, more than a page holds ({budget}): explain a smaller model")
    if requested is None:
        wanted = LARGE_SNAPSHOTS if dtype == "float32" else max(1, (DEFAULT_PAGE - base) // per_snapshot)
        return min(wanted, fit)
    if requested < 1:
        raise UserError(f"--snapshots must be at least 1, got {requested}")
    if min(requested, available) > fit:
        raise UserError(f"--snapshots {requested} makes a page above {budget} ({per_snapshot / 1e6:.1f} MB per "
                        f"snapshot): pick --snapshots {fit} or fewer")
    return requested


def _command(*words: Any) -> str:
    return shlex.join(str(w) for w in words)


def page_data(checkpoint: Checkpoint, metrics_path: str | None = None, data: str | None = None,
              snapshots: int | None = None, seed: int | None = None, shown_dir: str | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data: the run, its steps, the snapshots' weights and samples."""
    config = checkpoint.config
    text_mode = config.data_format == "text"
    tokenizer = Tokenizer(checkpoint.vocab)
    V = tokenizer.vocab_size
    seed = config.seed if seed is None else seed
    if not 0 <= seed < MAX_SEED:
        raise UserError(f"--seed must be 0 or more and below 2**64, got {seed}")
    dataset = _dataset(checkpoint, data)
    metrics = _metrics(checkpoint, metrics_path)
    shapes = param_shapes(config, V)
    num_params = Layout(shapes).total
    dtype = "float32" if num_params > FLOAT32_ABOVE else "float64"
    where = shown_dir or str(checkpoint.path)

    # Training docs (lines) or lines of the training text, to judge samples copy-or-new.
    if text_mode:
        train_set = set(tokenizer.decode(dataset.train_ids).split("\n"))
        held_set: set[str] = set()
    else:
        train_set, held_set = set(dataset.train_docs), set(dataset.val_docs) - set(dataset.train_docs)

    out: dict[str, Any] = {
        "format": "microgpt-explain", "version": 1, "written_by": f"microgpt {__version__}",
        "run": {"dir": where, "run_id": checkpoint.meta.get("run_id"), "step": checkpoint.step,
                "engine": checkpoint.engine, "num_params": num_params, "data": dataset.path.name,
                "data_format": config.data_format, "size": dataset.size},
        "config": config.to_dict(),
        "vocab": tokenizer.chars, "bos": tokenizer.BOS, "dtype": dtype,
        "shapes": [[name, r, c] for name, (r, c) in shapes.items()],
        "training": {
            "steps": list(metrics.step), "loss": [_finite(x) for x in metrics.loss],
            "lr": [_finite(x) for x in metrics.lr], "val": [[s, _finite(v)] for s, v in metrics.val],
            "running_window": WINDOW, "uniform": math.log(V),
            **_step_documents(dataset, metrics, config),
        },
        "stats": _stats(metrics, list(shapes)),
        "graph": graph_counts(config, V),
        "train_set": _joined(train_set, DOCS_BUDGET), "held_out_set": _joined(held_set, DOCS_BUDGET),
        "default_text": (tokenizer.decode(dataset.train_ids[:config.block_size + 1]) if text_mode
                         else (dataset.train_docs or dataset.docs)[0]),
        # What `microgpt sample` continues when given no --prompt (lines mode: nothing).
        "default_prompt": default_prompt(tokenizer) if text_mode else "",
        "rng_state": list(checkpoint.rng_state()[1]),
    }

    # Snapshots: as many as the page can carry.
    available = sorted(set(checkpoint.snapshot_steps()) | {checkpoint.step})
    per_snapshot = _b64_size(num_params * (4 if dtype == "float32" else 8)) + 200
    base = len(json.dumps(out)) + 400_000  # with the scripts, the styles and the samples
    k = _snapshot_count(snapshots, len(available), per_snapshot, base, dtype, num_params)
    steps = choose_snapshots(available, k)

    count = 1 if text_mode else (config.num_samples or 20)
    judge = lambda texts: sample_marks(texts, text_mode, train_set, held_set)  # noqa: E731
    out["snapshots"], final = _snapshots(checkpoint, steps, shapes, dtype, seed, count, judge)
    flags = ["--max-tokens", TEXT_SAMPLE_TOKENS] if text_mode else ["--num-samples", count]
    out["samples"] = {
        "seed": seed, "count": count, "max_tokens": TEXT_SAMPLE_TOKENS if text_mode else None,
        "temperature": config.temperature, "top_k": config.top_k,
        "final": final, "final_marks": judge(final),
        "command": _command("microgpt", "sample", "--checkpoint", where, "--snapshot", "STEP", "--seed", seed, *flags),
        "final_command": _command("microgpt", "sample", "--checkpoint", where,
                                  *(["--max-tokens", TEXT_SAMPLE_TOKENS] if text_mode else [])),
    }
    return out


def _snapshots(checkpoint: Checkpoint, steps: list[int], shapes: dict[str, tuple[int, int]], dtype: str, seed: int,
               count: int, judge: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Each snapshot's weights (base64) and samples, drawn with random.Random(seed) as `sample --snapshot STEP
    --seed S` draws them; and the run's own samples, the checkpoint's generator continued from its last step."""
    from .engines import create_engine

    config = checkpoint.config
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = create_engine("numpy", config, tokenizer.vocab_size, random.Random(config.seed))
    try:
        snaps = []
        for step in steps:  # the last is the checkpoint's own step, so the engine ends with its weights
            weights = checkpoint.snapshot(step, shapes)
            engine.load_state_dict(weights)
            texts = _draw(engine, tokenizer, random.Random(seed), config, count)
            flat = _concat([weights[name] for name in shapes])
            snaps.append({"step": step, "weights": encode_floats(flat, dtype), "samples": texts, "marks": judge(texts)})
        rng = random.Random()
        rng.setstate(checkpoint.rng_state())
        drawn = config.num_samples or config.data_format == "text"  # what `sample --checkpoint DIR` prints
        final = _draw(engine, tokenizer, rng, config, count) if drawn else []
    finally:
        engine.close()
    return snaps, final


def _concat(matrices: list[Any]) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in matrices])


# --- the page ---------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return (resources.files("microgpt") / "web" / name).read_text(encoding="utf-8")


def _script(source: str) -> str:
    # Inline, "</script" would end the element early; "<\/script" is the same string to JavaScript.
    return source.replace("</script", "<\\/script")


def _style(source: str) -> str:
    return source.replace("</style", "<\\/style")  # a CSS escape of "/": the element cannot end early


def render(data: dict[str, Any]) -> str:
    """The page: the template with the styles, the scripts and the data (JSON) inlined."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    parts = {
        "title": html.escape(f"microgpt explain: {data['run']['dir']}", quote=False),
        "styles": "\n".join(f"<style>\n{_style(_asset(name))}\n</style>" for name in STYLES),
        # "<" escaped as \u003c: the JSON cannot end its script element, and JSON.parse reads it back.
        "data": payload.replace("<", "\\u003c"),
        "scripts": "\n".join(f"<script>\n{_script(_asset(name))}\n</script>" for name in SCRIPTS),
    }
    # One pass over the template, so nothing inlined is ever scanned for markers.
    return re.sub(r"<!-- microgpt:(\w+) -->", lambda m: parts[m.group(1)], _asset("explain.html"))


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.dir)
    output = check_output_file(args.output or checkpoint.path / "explain.html", "-o", "explain.html", (".html", ".htm"))
    data = page_data(checkpoint, args.metrics, args.data, args.snapshots, args.seed, shown_dir=args.dir)
    page = render(data).encode("utf-8")
    if len(page) > PAGE_BUDGET:
        raise UserError(f"the page would weigh {len(page) / 1e6:.1f} MB, above {PAGE_BUDGET // 10**6} MB: pass "
                        f"--snapshots {max(1, len(data['snapshots']) // 2)}")
    write_atomic(output, page)
    steps = [s["step"] for s in data["snapshots"]]
    print(f"wrote {output} ({len(page) / 1e6:.2f} MB, {len(steps)} snapshot{'s' if len(steps) > 1 else ''} of the "
          f"weights as {data['dtype']}: steps {', '.join(map(str, steps))}) in {time.perf_counter() - started:.1f} s; "
          "open it in a browser (it needs no network)")
    return 0

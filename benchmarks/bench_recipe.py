"""The book's GPT against a nanoGPT-style GPT on nanoGPT's shakespeare_char CPU recipe, by ablation.

    python benchmarks/bench_recipe.py [--data FILE] [--seeds 3] [--steps 2000] [--only NAME,...]
                                      [--jobs 2] [--results /tmp/bench_recipe.json] [--plot PNG]
    python benchmarks/bench_recipe.py --check     # the harness check (below), a few seconds

The recipe (nanoGPT's CPU command for shakespeare_char): text mode, the last 10% of the text held
out, n_layer 4, n_head 4, n_embd 128, block_size 64, batch_size 12, lr 1e-3 with 100 warmup steps
and cosine decay to 1e-4, beta2 0.99, 2,000 steps, no dropout.

Two models train on it, on the product's own data pipeline (`microgpt.data.prepare`): for a seed,
every variant sees the very same batches (`dataset.examples(step)`) and is scored on the very
same held-out windows, so two variants differ only by what the variant changes.

- `product`: the torch engine (float32, CPU, one thread) driven by `microgpt.train.train`, i.e.
  exactly what `microgpt train --engine torch --dtype float32` runs.
- `script`: `RecipeGPT` below, one small PyTorch model with a switch for each way the book's GPT
  differs from nanoGPT's (see `OURS` and `NANOGPT`), trained by the same loop and schedule
  (`microgpt.optim.learning_rate`) with an AdamW written here in the product's order of operations.

Every variant starts from the same standard normals, drawn as the book draws its weights
(`initial_values`, from random.Random(seed)) and scaled per matrix by the variant's init; extra
parameters (norm gains, biases) start at 1 and 0. With every switch set to ours the script's
model starts from the product's very weights; `--check` trains both for a few steps from them
and asserts the losses agree to float32 precision, so the ablations measure the model and not
the harness.

Scores, for each run: the product's validation loss (mean over `--eval-windows` windows drawn once
from the held-out text, as `microgpt train` reports it) every `--eval-every` steps, and at the end
also the loss over the whole held-out text (every non-overlapping window of block_size + 1
characters: about 1,700 windows instead of 200, so less noise). Training tokens/s counts
batch_size x block_size predicted tokens per step, evaluation time excluded.

Each run uses one PyTorch thread; `--jobs` runs go side by side (default 2). Results go to the
`--results` JSON file as each run ends, so an interrupted benchmark resumes where it stopped; a
run whose settings changed is run again. The table at the end gives, per variant, the mean final
validation loss over the seeds with its standard deviation and range, and the paired difference
to `ours` (same seed, same batches, same windows).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timing import shakespeare

from microgpt.config import Config, flag_of
from microgpt.data import Dataset, prepare, write_atomic
from microgpt.engines import create_engine
from microgpt.engines.base import Layout, initial_values
from microgpt.optim import learning_rate
from microgpt.train import mean_loss, train

# --- the recipe and its variants ------------------------------------------------------------------

RECIPE = dict(data_format="text", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
              learning_rate=1e-3, warmup_steps=100, lr_schedule="cosine", min_lr=1e-4, beta2=0.99,
              dropout=0.0, val_fraction=0.1)

# Each difference between the two models, as a switch: the book's GPT (the product) ...
OURS: dict[str, Any] = dict(
    norm="rmsnorm",      # rmsnorm without gain | layernorm (with gain; with a bias when bias is on)
    activation="relu",   # relu | gelu (exact, erf)
    embed_norm=True,     # the book normalises wte + wpe before the first layer; nanoGPT does not
    final_norm=False,    # a norm between the last layer and the head
    bias=False,          # biases in every linear layer but the head (and in layernorm)
    tied=False,          # the head is wte (nanoGPT) or a matrix of its own (the book)
    init="book",         # book: all N(0, init_std) | nanogpt: N(0, 0.02), wo and fc2 N(0, 0.02/sqrt(2 n_layer))
    init_std=0.08,
    beta1=0.85,
    weight_decay=0.0,    # decoupled, on every matrix (never on gains or biases)
    grad_clip=0.0,
)
# ... and nanoGPT's model as its shakespeare_char recipe runs it (train.py's default bias=False).
NANOGPT: dict[str, Any] = dict(OURS, norm="layernorm", activation="gelu", embed_norm=False, final_norm=True,
                               tied=True, init="nanogpt", init_std=0.02, beta1=0.9, weight_decay=0.1, grad_clip=1.0)
# What the product can change by flag; the rest of the switches need the script's model.
PRODUCT_FLAGS = ("init_std", "beta1", "weight_decay", "grad_clip")
NANOGPT_OPTIM = {key: NANOGPT[key] for key in ("beta1", "weight_decay", "grad_clip")}


def variant(engine: str, base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"engine": engine, **base, **changes}


# name -> engine and switches. The default run is every variant but those in EXTRA.
VARIANTS: dict[str, dict[str, Any]] = {
    "nanogpt": variant("script", NANOGPT),
    "ours": variant("product", OURS),
    # ours, one difference at a time switched to nanoGPT's
    "ours+layernorm": variant("script", OURS, norm="layernorm"),
    "ours+gelu": variant("script", OURS, activation="gelu"),
    "ours-embed_norm": variant("script", OURS, embed_norm=False),
    "ours+final_norm": variant("script", OURS, final_norm=True),
    "ours+tied": variant("script", OURS, tied=True),
    "ours+init_nanogpt": variant("script", OURS, init="nanogpt", init_std=0.02),
    "ours+init_std_0.02": variant("product", OURS, init_std=0.02),
    "ours+beta1_0.9": variant("product", OURS, beta1=0.9),
    "ours+wd_0.1": variant("product", OURS, weight_decay=0.1),
    "ours+clip_1": variant("product", OURS, grad_clip=1.0),
    "ours+bias": variant("script", OURS, bias=True),
    # what the product's flags alone reach
    "ours+nanogpt_optim": variant("product", OURS, **NANOGPT_OPTIM),
    "ours+nanogpt_optim+init_std_0.02": variant("product", OURS, init_std=0.02, **NANOGPT_OPTIM),
    "ours+clip_1+wd_0.1": variant("product", OURS, grad_clip=1.0, weight_decay=0.1),
    # what the product would reach with the architecture switches that help (not product flags yet)
    "ours+gelu+clip_1": variant("script", OURS, activation="gelu", grad_clip=1.0),
    "ours+gelu+final_norm+clip_1": variant("script", OURS, activation="gelu", final_norm=True, grad_clip=1.0),
    # nanoGPT with its model's differences switched to ours, one at a time
    "nanogpt+rmsnorm": variant("script", NANOGPT, norm="rmsnorm"),
    "nanogpt+relu": variant("script", NANOGPT, activation="relu"),
    "nanogpt+embed_norm": variant("script", NANOGPT, embed_norm=True),
    "nanogpt-final_norm": variant("script", NANOGPT, final_norm=False),
    "nanogpt+untied": variant("script", NANOGPT, tied=False),
    "nanogpt+init_book": variant("script", NANOGPT, init="book", init_std=0.08),
    "nanogpt+bias": variant("script", NANOGPT, bias=True),
    # the harness's own check over a whole run: the script's model with every switch ours
    "ours_script": variant("script", OURS),
}
EXTRA = {"ours_script"}


def recipe_config(spec: dict[str, Any], seed: int, steps: int, eval_windows: int) -> Config:
    """The product's Config of this variant (the script's model reads its switches from `spec`)."""
    # A short trial run (--steps under 1,000) warms up over its first 10% instead of 100 steps.
    recipe = dict(RECIPE, warmup_steps=min(RECIPE["warmup_steps"], steps // 10))
    return Config(**recipe, num_steps=steps, seed=seed, eval_windows=eval_windows, init_std=spec["init_std"],
                  beta1=spec["beta1"], weight_decay=spec["weight_decay"], grad_clip=spec["grad_clip"]).validate()


def command(spec: dict[str, Any], data: str = "FILE") -> str:
    """The `microgpt train` command of a product variant."""
    flags = [f"{flag_of(key)} {spec[key]:g}" for key in PRODUCT_FLAGS if spec[key] != OURS[key]]
    return ("microgpt train --data " + data + " --data-format text --engine torch --dtype float32 "
            "--n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --steps 2000 "
            "--lr 1e-3 --warmup-steps 100 --lr-schedule cosine --min-lr 1e-4 --eval-every 250"
            + "".join(" " + f for f in flags))


# --- the script's model -----------------------------------------------------------------------------


def rmsnorm(x: torch.Tensor) -> torch.Tensor:
    """The book's norm: x * (mean(x^2) + 1e-5)^-1/2, no gain."""
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5)


class Norm(nn.Module):
    """rmsnorm without gain, or layernorm with a gain (and a bias when `bias`)."""

    def __init__(self, kind: str, width: int, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        if kind == "layernorm":
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return rmsnorm(x)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)


class Linear(nn.Module):
    """y = x W^T (+ b): W is (n_out, n_in), the book's layout, so product weights load by name."""

    def __init__(self, n_out: int, n_in: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, s: dict[str, Any], n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.act = F.relu if s["activation"] == "relu" else F.gelu
        self.norm1, self.norm2 = Norm(s["norm"], n_embd, s["bias"]), Norm(s["norm"], n_embd, s["bias"])
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            setattr(self, name, Linear(n_embd, n_embd, s["bias"]))
        self.mlp_fc1 = Linear(4 * n_embd, n_embd, s["bias"])
        self.mlp_fc2 = Linear(n_embd, 4 * n_embd, s["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp_fc2(self.act(self.mlp_fc1(self.norm2(x))))

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
                   for w in (self.attn_wq, self.attn_wk, self.attn_wv))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.attn_wo(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class RecipeGPT(nn.Module):
    """The book's GPT or nanoGPT's, or anything between, as the switches `s` say."""

    def __init__(self, s: dict[str, Any], config: Config, vocab_size: int) -> None:
        super().__init__()
        c = config
        self.s = s
        self.wte = nn.Parameter(torch.zeros(vocab_size, c.n_embd))  # (V, C)
        self.wpe = nn.Parameter(torch.zeros(c.block_size, c.n_embd))  # (block_size, C)
        self.lm_head = None if s["tied"] else nn.Parameter(torch.zeros(vocab_size, c.n_embd))  # (V, C)
        self.embed_norm = Norm(s["norm"], c.n_embd, s["bias"]) if s["embed_norm"] else None
        self.blocks = nn.ModuleList(Block(s, c.n_embd, c.n_head) for _ in range(c.n_layer))
        self.final_norm = Norm(s["norm"], c.n_embd, s["bias"]) if s["final_norm"] else None

    def book_matrices(self) -> dict[str, torch.Tensor]:
        """The matrices the book's GPT also has, under its names (wte, wpe, lm_head, layer{i}.attn_wq, ...)."""
        out = {"wte": self.wte, "wpe": self.wpe}
        if self.lm_head is not None:
            out["lm_head"] = self.lm_head
        for i, block in enumerate(self.blocks):
            for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2"):
                out[f"layer{i}.{name}"] = getattr(block, name).weight
        return out

    @torch.no_grad()
    def load_book(self, weights: dict[str, Any]) -> None:
        """Copy the book-named matrices in `weights` (float64 arrays); a tied head ignores lm_head."""
        for name, p in self.book_matrices().items():
            p.copy_(torch.as_tensor(weights[name], dtype=torch.float64))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits, or the mean cross-entropy against (B, T) targets."""
        T = idx.shape[1]
        x = self.wte[idx] + self.wpe[:T]  # (B, T, C)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        for block in self.blocks:
            x = block(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = F.linear(x, self.wte if self.lm_head is None else self.lm_head)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def initial_weights(s: dict[str, Any], config: Config, vocab_size: int, rng: random.Random) -> dict[str, Any]:
    """Book-named initial matrices: the book's standard normals (one per weight, in its order), scaled per matrix.

    book: std init_std everywhere (the product's very weights); nanogpt: 0.02, and 0.02 / sqrt(2 n_layer)
    for the projections back into the residual stream (attn_wo, mlp_fc2).
    """
    layout = Layout.of(config, vocab_size)
    z = torch.tensor(initial_values(replace(config, init_std=1.0), vocab_size, rng), dtype=torch.float64)
    out = {}
    for name, view in layout.views(z).items():
        std = s["init_std"]
        if s["init"] == "nanogpt" and name.endswith(("attn_wo", "mlp_fc2")):
            std = std / math.sqrt(2 * config.n_layer)
        out[name] = view * std
    return out


class AdamW:
    """Adam with decoupled weight decay on matrices, in the order of operations of the product's engines."""

    def __init__(self, params: list[nn.Parameter], beta1: float, beta2: float, weight_decay: float,
                 eps: float = 1e-8) -> None:
        self.params, self.b1, self.b2, self.wd, self.eps = params, beta1, beta2, weight_decay, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr_t: float, step: int) -> None:
        b1, b2 = self.b1, self.b2
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            if self.wd and p.dim() == 2:
                p.sub_(p * (lr_t * self.wd))
            m.mul_(b1).add_(g * (1 - b1))
            v.mul_(b2).add_((g * g).mul_(1 - b2))
            m_hat = m / (1 - b1 ** (step + 1))
            v_hat = v / (1 - b2 ** (step + 1))
            p.sub_((m_hat * lr_t).div_(v_hat.sqrt().add_(self.eps)))


class ScriptRun:
    """The script's model behind the same small interface the benchmark uses for the product engine."""

    def __init__(self, s: dict[str, Any], config: Config, vocab_size: int, rng: random.Random) -> None:
        self.config = config
        self.model = RecipeGPT(s, config, vocab_size)
        self.model.load_book(initial_weights(s, config, vocab_size, rng))
        self.params = list(self.model.parameters())
        self.opt = AdamW(self.params, s["beta1"], config.beta2, s["weight_decay"])
        self.grad_clip = s["grad_clip"]

    def train_step(self, batch: list[list[int]], step: int) -> float:
        t = torch.tensor(batch)  # (B, block_size + 1)
        loss = self.model(t[:, :-1], t[:, 1:])
        loss.backward()
        if self.grad_clip:
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.params)).item()
            if norm > self.grad_clip:
                for p in self.params:
                    p.grad.mul_(self.grad_clip / (norm + 1e-6))
        self.opt.step(learning_rate(step, self.config), step)
        for p in self.params:
            p.grad = None
        return loss.item()

    @torch.no_grad()
    def mean_loss(self, examples: list[list[int]], chunk: int = 256) -> float:
        total = 0.0
        for i in range(0, len(examples), chunk):
            t = torch.tensor(examples[i:i + chunk])
            total += self.model(t[:, :-1], t[:, 1:]).item() * len(t)
        return total / len(examples)


def product_engine(config: Config, vocab_size: int, rng: random.Random):
    return create_engine("torch", config, vocab_size, rng, dtype="float32", device="cpu", threads=1)


# --- one run ----------------------------------------------------------------------------------------


def heldout_windows(dataset: Dataset) -> list[list[int]]:
    """Every non-overlapping window of block_size + 1 ids of the held-out text: all of it, once."""
    span, ids = dataset.config.block_size + 1, dataset.val_ids
    return [ids[o:o + span] for o in range(0, len(ids) - span + 1, span - 1)]


def run_one(name: str, spec: dict[str, Any], seed: int, steps: int, data: str, eval_every: int,
            eval_windows: int) -> dict[str, Any]:
    """Train variant `name` with `seed`; its losses, validation curve and speed."""
    torch.set_num_threads(1)
    config = recipe_config(spec, seed, steps, eval_windows)
    dataset, rng = prepare(config, data)
    vocab_size = dataset.tokenizer.vocab_size
    val = dataset.val_examples()
    losses: list[float] = []
    curve: list[list[float]] = []
    eval_s = 0.0

    if spec["engine"] == "product":
        engine = product_engine(config, vocab_size, rng)

        def validate(examples: list[list[int]]) -> float:
            return mean_loss(engine, examples)
    else:
        run = ScriptRun(spec, config, vocab_size, rng)
        validate = run.mean_loss

    def after_step(step: int, loss: float) -> None:
        nonlocal eval_s
        losses.append(round(loss, 5))
        done = step + 1
        if done % eval_every == 0 or done == steps:
            t0 = time.perf_counter()
            curve.append([done, validate(val)])
            eval_s += time.perf_counter() - t0

    started = time.perf_counter()
    if spec["engine"] == "product":
        train(engine, dataset, config, on_step=lambda step, loss, lr_t: after_step(step, loss))
    else:
        for step in range(steps):
            after_step(step, run.train_step(dataset.examples(step), step))
    train_s = time.perf_counter() - started - eval_s
    full = validate(heldout_windows(dataset))
    return {"variant": name, "seed": seed, "steps": steps, "spec": spec, "eval_windows": eval_windows,
            "val": curve[-1][1], "val_full": full, "curve": curve, "train_losses": losses,
            "tokens_per_s": steps * config.batch_size * config.block_size / train_s, "train_s": train_s}


def time_steps(spec: dict[str, Any], data: str, steps: int = 60, skip: int = 5) -> float:
    """Training tokens/s of a variant from the median time of `steps` steps (after `skip` warm-up steps),
    which a busy neighbour on a shared machine moves less than the mean."""
    torch.set_num_threads(1)
    config = recipe_config(spec, 1, 2000, 200)
    dataset, rng = prepare(config, data)
    marks = [time.perf_counter()]
    if spec["engine"] == "product":
        engine = product_engine(config, dataset.tokenizer.vocab_size, rng)

        def on_step(step: int, loss: float, lr_t: float) -> bool:
            marks.append(time.perf_counter())
            return step + 1 == skip + steps

        train(engine, dataset, config, on_step=on_step)
    else:
        run = ScriptRun(spec, config, dataset.tokenizer.vocab_size, rng)
        for step in range(skip + steps):
            run.train_step(dataset.examples(step), step)
            marks.append(time.perf_counter())
    durations = [b - a for a, b in zip(marks[skip:], marks[skip + 1:])]
    return config.batch_size * config.block_size / statistics.median(durations)


# --- the harness check ------------------------------------------------------------------------------


def check(data: str, steps: int = 8, seed: int = 0) -> None:
    """The script's model with every switch ours against the product's torch engine, from the same
    weights on the same batches: the losses of the first steps and the validation loss must agree to
    float32 precision. Done for the book's optimizer and for the nanoGPT-style one (clip, decay, beta1)."""
    torch.set_num_threads(1)
    check_one("ours", variant("script", OURS), data, steps, seed)
    check_one("ours+nanogpt_optim+init_std_0.02", variant("script", OURS, init_std=0.02, **NANOGPT_OPTIM),
              data, steps, seed)
    print("ok: the script's model with every switch ours is the product's model, to float32 precision")


def check_one(label: str, spec: dict[str, Any], data: str, steps: int, seed: int) -> None:
    config = recipe_config(spec, seed, 2000, 50)
    d1, rng1 = prepare(config, data)
    d2, rng2 = prepare(config, data)
    engine = product_engine(config, d1.tokenizer.vocab_size, rng1)
    run = ScriptRun(spec, config, d2.tokenizer.vocab_size, rng2)
    start = engine.state_dict()
    same = all(torch.equal(p.detach().double(), torch.as_tensor(start[name]))
               for name, p in run.model.book_matrices().items())
    got: list[tuple[float, float]] = []

    def on_step(step: int, loss: float, lr_t: float) -> bool:
        got.append((loss, run.train_step(d2.examples(step), step)))
        return step + 1 == steps

    train(engine, d1, config, on_step=on_step)
    val = (mean_loss(engine, d1.val_examples()), run.mean_loss(d2.val_examples()))
    worst = max(abs(a - b) / abs(a) for a, b in [*got, val])
    print(f"{label}: same initial weights: {same}; losses of steps 1-{steps} (product / script):")
    for i, (a, b) in enumerate(got):
        print(f"  step {i + 1}: {a:.7f} / {b:.7f}")
    print(f"  val loss after {steps} steps: {val[0]:.7f} / {val[1]:.7f}; largest relative difference {worst:.1e}")
    if not same or worst > 1e-5:
        sys.exit(f"{label}: the script's model does not reproduce the product's torch engine")


# --- results ----------------------------------------------------------------------------------------


def key(name: str, seed: int, steps: int) -> str:
    return f"{name}|seed={seed}|steps={steps}"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, results: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(results).encode())


def runs_of(results: dict[str, Any], name: str, seeds: list[int], steps: int) -> list[dict[str, Any]]:
    return [results[k] for s in seeds if (k := key(name, s, steps)) in results]


def spread(xs: list[float]) -> tuple[float, float, float, float]:
    """mean, standard deviation (0 for one value), min, max."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, min(xs), max(xs)


def table(results: dict[str, Any], names: list[str], seeds: list[int], steps: int,
          timing: dict[str, float] | None = None) -> str:
    """Markdown: per variant, final validation loss over the seeds and the paired difference to its base,
    and training tokens/s (from --time when measured, else the mean over the runs)."""
    timing = timing or {}
    bases = {b: {r["seed"]: r for r in runs_of(results, b, seeds, steps)} for b in ("ours", "nanogpt")}
    rows = ["| variant | seeds | val loss (200 windows) mean ± sd [min, max] | val loss, whole held-out text "
            "| Δ vs its base (paired, whole text) mean ± sd | train tokens/s |",
            "|---|---|---|---|---|---|"]
    for name in names:
        runs = runs_of(results, name, seeds, steps)
        if not runs:
            continue
        m, sd, lo, hi = spread([r["val"] for r in runs])
        fm, fsd, _, _ = spread([r["val_full"] for r in runs])
        # A variant is compared with the model it changes: nanoGPT's for "nanogpt+...", else ours.
        base = bases["nanogpt" if name.startswith("nanogpt") else "ours"]
        deltas = [r["val_full"] - base[r["seed"]]["val_full"] for r in runs if r["seed"] in base]
        dm, dsd, _, _ = spread(deltas) if deltas and name not in bases else (math.nan, math.nan, 0, 0)
        delta = "" if math.isnan(dm) else f"{dm:+.4f} ± {dsd:.4f}"
        tps = timing.get(name) or statistics.fmean(r["tokens_per_s"] for r in runs)
        rows.append(f"| {name} | {len(runs)} | {m:.4f} ± {sd:.4f} [{lo:.4f}, {hi:.4f}] | {fm:.4f} ± {fsd:.4f} "
                    f"| {delta} | {tps:,.0f} |")
    return "\n".join(rows)


# How the figure names the variants it draws; any other is drawn under its own name.
PLOT_LABELS = {
    "ours": "the book's GPT, the book's Adam (beta1 0.85, no decay, no clipping)",
    "nanogpt": "nanoGPT's model and optimizer",
    "ours+nanogpt_optim": "the book's GPT, nanoGPT's optimizer settings",
}


def plot(results: dict[str, Any], names: list[str], seeds: list[int], steps: int, out: Path,
         window: int = 50) -> None:
    """Train loss (a running mean over `window` steps) and validation loss against step, mean over
    the seeds with their range shaded, one colour per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=90)
    for name, colour in zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False):
        runs = runs_of(results, name, seeds, steps)
        if not runs:
            continue
        smooth = []
        for r in runs:
            xs = r["train_losses"]
            smooth.append([statistics.fmean(xs[max(0, i - window + 1):i + 1]) for i in range(len(xs))])
        x = list(range(1, steps + 1))
        mean = [statistics.fmean(col) for col in zip(*smooth)]
        label = PLOT_LABELS.get(name, name)
        ax.plot(x, mean, color=colour, lw=1, alpha=0.6, label=f"{label}: training (mean of the last {window} steps)")
        vx = [p[0] for p in runs[0]["curve"]]
        vals = list(zip(*[[p[1] for p in r["curve"]] for r in runs]))
        ax.plot(vx, [statistics.fmean(v) for v in vals], "o-", color=colour, lw=2, ms=4,
                label=f"{label}: validation")
        ax.fill_between(vx, [min(v) for v in vals], [max(v) for v in vals], color=colour, alpha=0.2)
    ax.set_ylim(1.4, 3.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(f"Tiny Shakespeare, nanoGPT's CPU recipe: mean over {len(seeds)} seeds (band: min to max)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="Tiny Shakespeare (default: download the public copy once, checked "
                        "against its sha256)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N for every variant (default: 3)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--only", help="comma-separated variants to run (default: all but "
                        + ", ".join(sorted(EXTRA)) + "); known: " + ", ".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each (default: 2)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-windows", type=int, default=200, help="validation windows, as microgpt train's "
                        "--eval-windows (default: 200, its default)")
    parser.add_argument("--results", default="/tmp/bench_recipe.json", help="JSON file of finished runs; "
                        "kept across restarts")
    parser.add_argument("--plot", metavar="PNG", help="draw the loss curves of --plot-variants into PNG")
    parser.add_argument("--plot-variants", default="ours,nanogpt")
    parser.add_argument("--time", type=int, metavar="STEPS", help="only time STEPS steps of each variant, one "
                        "at a time, and keep tokens/s from the median step for the table")
    parser.add_argument("--check", action="store_true", help="only check that the script's model reproduces "
                        "the product's torch engine")
    args = parser.parse_args()

    data = str(shakespeare(args.data))
    if args.check:
        check(data)
        return
    names = args.only.split(",") if args.only else [n for n in VARIANTS if n not in EXTRA]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: pick among {', '.join(VARIANTS)}")
    seeds = list(range(1, args.seeds + 1))
    path = Path(args.results)
    results = load(path)
    timing_path = path.with_name(path.stem + ".timing.json")  # its own file: --time may run beside a benchmark
    if args.time:
        timing = load(timing_path)
        for name in names:
            timing[name] = time_steps(VARIANTS[name], data, args.time)
            save(timing_path, timing)
            print(f"{name:<34} {timing[name]:,.0f} tokens/s", flush=True)
        return

    def done(name: str, seed: int) -> bool:
        r = results.get(key(name, seed, args.steps))
        return r is not None and r["spec"] == VARIANTS[name] and r["eval_windows"] == args.eval_windows

    todo = [(n, s) for s in seeds for n in names if not done(n, s)]
    print(f"{len(todo)} run(s) to do, {len(names) * len(seeds) - len(todo)} already in {path}", flush=True)
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_one, n, VARIANTS[n], s, args.steps, data, args.eval_every,
                                   args.eval_windows): (n, s) for n, s in todo}
            for future in concurrent.futures.as_completed(futures):
                r = future.result()
                results[key(r["variant"], r["seed"], r["steps"])] = r
                save(path, results)
                curve = " ".join(f"{v:.3f}" for _, v in r["curve"])
                print(f"{r['variant']:<34} seed {r['seed']}: val {r['val']:.4f} (whole held-out text "
                      f"{r['val_full']:.4f}) | curve {curve} | {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    print()
    print(table(results, names, seeds, args.steps, load(timing_path)))
    for name in names:
        if VARIANTS[name]["engine"] == "product" and name != "ours":
            print(f"{name}: {command(VARIANTS[name])}")
    if args.plot:
        plot(results, args.plot_variants.split(","), seeds, args.steps, Path(args.plot))


if __name__ == "__main__":
    main()

"""Chapters 4 and 5 on PyTorch: the book's GPT over a padded batch, on CPU, CUDA or MPS, in one process or many.

The function is the book's (SPEC sections 4-6); PyTorch's autograd replaces `Value` and a whole
batch of documents goes through the model at once:

- `GPT` is the model as an `nn.Module` whose parameters carry the book's names (`wte`, `wpe`,
  `lm_head`, `layer{i}.attn_wq`, ...; each an (n_out, n_in) matrix). A `Block` reads as the
  other engines' do: `x = attn(rmsnorm(x)) + x; x = mlp(rmsnorm(x)) + x`. Documents of different
  lengths are padded on the right to one length T; the causal mask already keeps every real
  position from seeing the padding after it, and padded positions get no loss, so padding never
  changes the result. The loss is the mean over documents of each document's mean
  cross-entropy (with one document, the book's loss).
- `TorchEngine` puts it behind the engine seam. All weights live in one flat tensor (the
  parameters are views into it), and so do their gradients and Adam's moments, so one update is
  a handful of tensor operations, in the order of `microgpt.optim.Adam` (not `torch.optim.Adam`,
  which folds the bias corrections into other operations, so rounds differently, and cannot
  turn them off).

Precision: float64 (default; agrees with the book engine to ~1e-12), float32, or bfloat16. For
bfloat16 the weights, gradients and Adam's moments stay float32 and the forward pass runs under
`torch.autocast`, so matrix products and attention run in bfloat16 while every update lands on
float32 weights (no separate master copy is needed).

Threads: on CPU a model narrower than 64 runs on one PyTorch thread (unless OMP_NUM_THREADS is
set or --threads is given); its operations take microseconds, less than handing them to a thread
pool costs.

Dropout (--dropout P, off by default): drawn from a torch generator of its own, seeded from
--seed, after the embedding's rmsnorm, on the attention weights and on both branches' outputs;
its state is saved in checkpoints, so a run with dropout resumes exactly.

Several processes: started by `torchrun`, which sets WORLD_SIZE > 1, the engine joins the
process group (gloo on CPU, nccl on CUDA, one GPU per process) and wraps the model in
`DistributedDataParallel`. The training loop hands each process its equal slice of the step's
documents and DDP averages the gradients, which is the gradient of the whole batch's mean loss.

Exports: `TorchEngine`, `GPT`, `Block`, `Dropout`, `rmsnorm`, `pad_batch`, `resolve_device`, `DTYPES`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..data import derived_rng
from ..errors import UserError
from .base import Engine, initial_values

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
SMALL_N_EMBD = 64  # below this width a CPU engine runs single-threaded (unless OMP_NUM_THREADS is set)
IGNORE = -100  # the target of a padded position: cross_entropy gives it zero loss and zero gradient


def derived_seed(seed: int, purpose: str) -> int:
    """An integer seed for a torch generator of its own, derived from --seed."""
    return derived_rng(seed, purpose).getrandbits(63)


def rmsnorm(x: torch.Tensor) -> torch.Tensor:
    """x * (mean(x^2) + 1e-5)^-1/2 over the last axis, no gain; at least float32 under bfloat16."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5)


class Block(nn.Module):
    """One transformer layer: causal multi-head attention, then the ReLU MLP, each with a residual."""

    def __init__(self, n_head: int, weights: dict[str, torch.Tensor], prefix: str, dropout: Dropout) -> None:
        super().__init__()
        self.n_head = n_head
        self.drop = dropout
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2"):
            setattr(self, name, nn.Parameter(weights[prefix + name]))

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), the book's layer in its order (branch + residual)."""
        x = self.attn(rmsnorm(x), cache) + x
        x = self.mlp(rmsnorm(x)) + x
        return x

    def attn(self, x: torch.Tensor, cache: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(hd), causal) v per head, then Wo; position t sees positions 0..t.

        With `cache` = [keys, values] (sampling, one new position) the earlier positions' keys and
        values come from it and this position's are appended.
        """
        B, T, C = x.shape
        # Each (B, H, T, hd): the heads become a batch axis.
        q, k, v = (F.linear(x, w).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for w in (self.attn_wq, self.attn_wk, self.attn_wv))
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (1, H, t, hd)
            cache[0], cache[1] = k, v
            y = F.scaled_dot_product_attention(q, k, v)  # one query over every cached position: nothing to mask
        elif self.drop.active:
            y = self.drop.attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.drop(F.linear(y.transpose(1, 2).reshape(B, T, C), self.attn_wo))  # (B, T, C)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(relu(fc1(x))), one position at a time."""
        return self.drop(F.linear(F.relu(F.linear(x, self.mlp_fc1)), self.mlp_fc2))  # (B, T, C)


class Dropout:
    """Dropout drawn from a generator of its own (seeded from --seed), so the book's random stream and
    PyTorch's global one are untouched; active only while training with p > 0."""

    def __init__(self, p: float, seed: int, device: torch.device) -> None:
        self.p = p
        self.training = True
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @property
    def active(self) -> bool:
        return self.p > 0 and self.training

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep * (1 / (1 - self.p))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention with dropout on the attention weights, as nanoGPT's attn_dropout."""
        T = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return self(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)) @ v


class GPT(nn.Module):
    """The book's GPT (SPEC section 5) over a padded batch; parameters named as the book's state dict."""

    def __init__(self, config: Config, weights: dict[str, torch.Tensor], dropout: Dropout) -> None:
        super().__init__()
        self.drop = dropout
        self.wte = nn.Parameter(weights["wte"])  # (vocab_size, C) token embeddings
        self.wpe = nn.Parameter(weights["wpe"])  # (block_size, C) position embeddings
        self.lm_head = nn.Parameter(weights["lm_head"])  # (vocab_size, C)
        self.layers: list[Block] = []
        for i in range(config.n_layer):
            block = Block(config.n_head, weights, f"layer{i}.", dropout)
            self.add_module(f"layer{i}", block)  # registered as layer{i}, so its weights are layer{i}.attn_wq, ...
            self.layers.append(block)

    def logits(self, inputs: torch.Tensor, start: int = 0,
               cache: list[list[torch.Tensor | None]] | None = None) -> torch.Tensor:
        """(B, T) token ids at positions start.. -> (B, T, vocab_size) logits of the next token at each."""
        T = inputs.shape[1]
        x = self.drop(rmsnorm(self.wte[inputs] + self.wpe[start:start + T]))  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, cache[i] if cache is not None else None)
        return F.linear(x, self.lm_head)  # (B, T, V)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, inv_n: torch.Tensor) -> torch.Tensor:
        """Mean over documents of each one's mean cross-entropy.

        inputs, targets: (B, T), padded targets are IGNORE; inv_n: (B,), 1 / (real positions).
        """
        B, T = inputs.shape
        logits = self.logits(inputs)
        losses = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE,
                                 reduction="none").view(B, T)  # 0 at padded positions
        per_doc = losses.sum(1) * inv_n  # (B,) each document's mean loss
        return per_doc[0] if B == 1 else per_doc.sum() * (1 / B)


def pad_batch(batch: list[list[int]], block_size: int, pad_id: int = 0) -> tuple[list, list, list]:
    """Right-pad examples to T = the longest one's prediction count (at most block_size).

    Returns inputs (B, T), targets (B, T) with IGNORE at padded positions, and 1/n per document.
    """
    counts = [min(block_size, len(tokens) - 1) for tokens in batch]
    T = max(counts)
    inputs = [tokens[:n] + [pad_id] * (T - n) for tokens, n in zip(batch, counts, strict=True)]
    targets = [tokens[1:n + 1] + [IGNORE] * (T - n) for tokens, n in zip(batch, counts, strict=True)]
    return inputs, targets, [1 / n for n in counts]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str, dtype: str = "float64", local_rank: int = 0) -> torch.device:
    """The torch device for `name` (auto, cpu, cuda, cuda:N, mps), or a UserError naming the fix.

    auto picks cuda (this process's GPU, cuda:LOCAL_RANK), else mps unless the dtype is float64
    (MPS has no float64), else cpu.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() and dtype != "float64" else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r}: pass --device auto, cpu, cuda or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} is not available (no GPU is visible to this torch {torch.__version__}): "
                            "pass --device cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} GPU(s) visible): "
                            "pass --device cuda:0")
    elif device.type == "mps":
        if not _mps_available():
            raise UserError("device mps is not available on this machine: pass --device cpu")
        if dtype == "float64":
            raise UserError("MPS has no float64: pass --dtype float32 (or --device cpu)")
    elif device.type != "cpu":
        raise UserError(f"device {name!r} is not supported: pass --device auto, cpu, cuda or mps")
    return device


class TorchEngine(Engine):
    """The book's model and Adam on PyTorch tensors, a whole padded batch per forward/backward."""

    name = "torch"
    no_dropout = None  # --dropout: the Dropout below, drawn from a generator of its own

    def __init__(self, config: Config, vocab_size: int, rng: random.Random, device: str = "auto",
                 dtype: str = "float64", compile: bool = False, threads: int = 0) -> None:
        super().__init__(config, vocab_size, rng)
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}: pass --dtype {', '.join(DTYPES)}")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and config.batch_size % world_size:
            fits = [b for b in range(world_size, 4 * world_size + 1, world_size)]
            raise UserError(f"--batch-size {config.batch_size} does not split evenly over {world_size} processes: "
                            f"pick a multiple of {world_size} ({', '.join(map(str, fits))}, ...)")
        self.device = resolve_device(device, dtype, int(os.environ.get("LOCAL_RANK", "0")))
        if threads:
            torch.set_num_threads(threads)
        elif self.device.type == "cpu" and config.n_embd < SMALL_N_EMBD and "OMP_NUM_THREADS" not in os.environ:
            # Each operation on a 16-wide matrix takes microseconds; handing it to a thread pool
            # costs more than that (tens of times more on a busy machine), so stay on one thread.
            torch.set_num_threads(1)
        self.dtype = dtype
        # bfloat16 computes under autocast; what is stored and updated stays float32.
        store = torch.float32 if dtype == "bfloat16" else DTYPES[dtype]
        self._autocast = dtype == "bfloat16"
        self.pad_id = 0  # the token padded positions carry; any id gives the same result

        # The four flat arrays; every parameter and its gradient is a view into them.
        values = torch.tensor(initial_values(config, vocab_size, rng), dtype=torch.float64)
        self.flat = values.to(self.device, store)
        self.flat_grad = torch.zeros_like(self.flat)
        self.m = torch.zeros_like(self.flat)  # Adam's first moment
        self.v = torch.zeros_like(self.flat)  # Adam's second moment
        self._last_update = torch.zeros_like(self.flat)
        self.dropout = Dropout(config.dropout, derived_seed(config.seed, "dropout"), self.device)
        self.model = GPT(config, self.layout.views(self.flat), self.dropout)
        self._params = list(self.model.parameters())
        # Gradients are views into flat_grad: backward accumulates into them in place, and
        # zero_grad keeps them, so they always exist.
        self._grads = list(self.layout.views(self.flat_grad).values())
        for p, g in zip(self._params, self._grads, strict=True):
            p.grad = g
        self._loss: torch.Tensor | None = None
        self._ddp: nn.Module | None = None
        self._owns_group = False
        self._module: nn.Module = self.model  # what forward() calls: the model, DDP-wrapped and/or compiled

        if world_size > 1:
            self._init_distributed()
        self._compiled = False
        if compile:
            self._module = self._compile(self._module)
            self._compiled = True

    # Setup.

    def _init_distributed(self) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "mps":
            raise UserError("several processes cannot share MPS: run one process, or pass --device cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # before nccl starts, so each process binds its own GPU
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._owns_group = True
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # DDP broadcasts rank 0's weights (already identical: same seed) and averages gradients in backward.
        self._ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None)
        self._module = self._ddp

    def _compile(self, module: nn.Module) -> nn.Module:
        try:
            return torch.compile(module, dynamic=True)
        except Exception as e:  # noqa: BLE001 - any failure means: this machine cannot compile
            raise UserError(f"torch.compile does not work here ({type(e).__name__}: {_first_line(e)}): "
                            "run without --compile") from None

    def _tensors(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets, inv_n = pad_batch(batch, self.config.block_size, self.pad_id)
        loss_dtype = torch.float64 if self.dtype == "float64" else torch.float32
        return (torch.tensor(inputs, device=self.device), torch.tensor(targets, device=self.device),
                torch.tensor(inv_n, dtype=loss_dtype, device=self.device))

    def _precision(self) -> contextlib.AbstractContextManager:
        if self._autocast:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # Training.

    def forward(self, batch: list[list[int]]) -> float:
        inputs, targets, inv_n = self._tensors(batch)
        self.dropout.training = True
        with self._precision():
            if self._compiled:
                loss = self._compiled_call(inputs, targets, inv_n)
            else:
                loss = self._module(inputs, targets, inv_n)
        self._loss = loss
        return loss.item()

    def _compiled_call(self, *args: torch.Tensor) -> torch.Tensor:
        try:
            return self._module(*args)
        except Exception as e:  # noqa: BLE001 - compilation happens at the first calls
            if "torch._dynamo" in type(e).__module__ or "torch._inductor" in type(e).__module__:
                raise UserError(f"torch.compile does not work here ({type(e).__name__}: {_first_line(e)}): "
                                "run without --compile") from None
            raise

    def backward(self) -> None:
        if self._loss is None:
            return
        self._loss.backward()
        self._loss = None  # let the graph go
        # Autograd adds into the gradient views in place; should anything have put a new
        # tensor there instead, fold it back so flat_grad stays the one source of truth.
        for p, g in zip(self._params, self._grads, strict=True):
            if p.grad is not g:
                g.copy_(p.grad)
                p.grad = g

    @torch.no_grad()
    def _update(self, lr_t: float, step: int) -> None:
        # The operations of microgpt.optim.Adam, element-wise on the flat tensors, in its order
        # (separate multiply and add: an `alpha=` argument may fuse them and round differently).
        c, p, g = self.config, self.flat, self.flat_grad
        if c.weight_decay:  # decoupled (AdamW): shrink every weight before the update
            p.sub_(p * (lr_t * c.weight_decay))
        if c.optimizer == "sgd":
            self._last_update = g * lr_t
            p.sub_(self._last_update)
            return
        b1, b2 = c.beta1, c.beta2
        self.m.mul_(b1).add_(g * (1 - b1))  # m = b1 * m + (1 - b1) * g
        self.v.mul_(b2).add_((g * g).mul_(1 - b2))  # v = b2 * v + (1 - b2) * g**2
        if c.bias_correction:
            m_hat = self.m / (1 - b1 ** (step + 1))
            v_hat = self.v / (1 - b2 ** (step + 1))
        else:
            m_hat, v_hat = self.m, self.v
        # sqrt where the book writes ** 0.5: both are correctly rounded, so the same number.
        self._last_update = (m_hat * lr_t).div_(v_hat.sqrt().add_(c.eps_adam))
        p.sub_(self._last_update)

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    def grad_norm(self) -> float:
        return self.flat_grad.double().norm().item()

    @torch.no_grad()
    def scale_grad(self, factor: float) -> None:
        self.flat_grad.mul_(factor)

    def _sum_squares(self, kind: str) -> list[float]:
        flat = {"params": self.flat, "grad": self.flat_grad, "update": self._last_update}[kind].double()
        return torch.stack([view.square().sum() for view in self.layout.views(flat).values()]).tolist()

    # Evaluation and sampling.

    @torch.no_grad()
    def evaluate(self, tokens: list[int]) -> float:
        self.dropout.training = False
        with self._precision():
            return self.model(*self._tensors([tokens])).item()

    def new_cache(self) -> list[list[torch.Tensor | None]]:
        return [[None, None] for _ in range(self.config.n_layer)]  # per layer: keys, values (1, H, t, hd)

    @torch.no_grad()
    def next_logits(self, token_id: int, pos_id: int, cache: Any) -> list[float]:
        self.dropout.training = False
        token = torch.tensor([[token_id]], device=self.device)
        with self._precision():
            return self.model.logits(token, pos_id, cache).view(-1).tolist()

    @torch.no_grad()
    def window_logits(self, tokens: list[int]) -> list[float]:
        self.dropout.training = False
        with self._precision():
            return self.model.logits(torch.tensor([tokens], device=self.device))[0, -1].tolist()

    # The four flat arrays, crossing the seam as float64 numpy arrays on the CPU.

    def _flat(self, kind: str) -> torch.Tensor:
        return {"params": self.flat, "grad": self.flat_grad, "m": self.m, "v": self.v}[kind]

    def _export(self, kind: str) -> dict[str, np.ndarray]:
        # A copy: later steps do not change it.
        host = self._flat(kind).detach().to("cpu", torch.float64, copy=True).numpy()
        return self.layout.views(host)

    def _import(self, kind: str, matrices: Mapping[str, Any]) -> None:
        flat = np.concatenate([np.asarray(matrices[name], dtype=np.float64).reshape(-1) for name in self.shapes])
        with torch.no_grad():
            self._flat(kind).copy_(torch.from_numpy(flat))

    def extra_state(self) -> dict[str, Any]:
        """The dropout generator's state, so an exact resume draws the same masks."""
        return {"dropout_rng": self.dropout.generator.get_state().tolist()} if self.config.dropout else {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if self.config.dropout and "dropout_rng" in state:
            self.dropout.generator.set_state(torch.tensor(state["dropout_rng"], dtype=torch.uint8))

    # Several processes.

    def reduce_loss(self, loss: float) -> float:
        if self._ddp is None:
            return loss
        import torch.distributed as dist

        total = torch.tensor([loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)  # sum over processes; each holds the mean of an equal-sized slice
        return total.item() * (1 / self.world_size)

    def close(self) -> None:
        """Leave the process group (one process: nothing to do). The engine is unusable afterwards.

        DDP and the tensors it watches must be gone first, or gloo's threads can still be running
        when the process exits, which aborts it.
        """
        if self._ddp is None:
            return
        import torch.distributed as dist

        del self._ddp, self._module, self.model, self._params, self._grads, self._loss
        del self.flat, self.flat_grad, self.m, self.v, self._last_update
        self._ddp = None
        gc.collect()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"

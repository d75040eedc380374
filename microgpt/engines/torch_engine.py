"""Chapters 4 and 5 on PyTorch: the book's GPT over a padded batch, on CPU, CUDA or MPS, in one process or many.

The function is the book's (SPEC sections 4-6); PyTorch's autograd replaces `Value` and a whole
batch of documents goes through the model at once:

- `GPT` is the model as an `nn.Module` whose parameters carry the book's names (`wte`, `wpe`,
  `lm_head`, `layer{i}.attn_wq`, ...; each an (n_out, n_in) matrix). Documents of different
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
set); its operations take microseconds, less than handing them to a thread pool costs.

Several processes: started by `torchrun`, which sets WORLD_SIZE > 1, the engine joins the
process group (gloo on CPU, nccl on CUDA, one GPU per process) and wraps the model in
`DistributedDataParallel`. The training loop hands each process its equal slice of the step's
documents and DDP averages the gradients, which is the gradient of the whole batch's mean loss.

Exports: `TorchEngine`, `GPT`, `Block`, `rmsnorm`, `pad_batch`, `resolve_device`, `DTYPES`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..errors import UserError
from .base import Engine, param_shapes

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
SMALL_N_EMBD = 64  # below this width a CPU engine runs single-threaded (unless OMP_NUM_THREADS is set)
IGNORE = -100  # the target of a padded position: cross_entropy gives it zero loss and zero gradient


def rmsnorm(x: torch.Tensor) -> torch.Tensor:
    """x * (mean(x^2) + 1e-5)^-1/2 over the last axis, no gain; at least float32 under bfloat16."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5)


class Block(nn.Module):
    """One transformer layer: causal multi-head attention, then the ReLU MLP, each with a residual."""

    def __init__(self, n_head: int, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.n_head = n_head
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2"):
            setattr(self, name, nn.Parameter(weights[name]))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        x = rmsnorm(x)
        # Each (B, H, T, hd): the heads become a batch axis.
        return tuple(F.linear(x, w).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                     for w in (self.attn_wq, self.attn_wk, self.attn_wv))

    def _finish(self, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = y.shape
        x = F.linear(y.transpose(1, 2).reshape(B, T, H * hd), self.attn_wo) + r  # (B, T, C)
        h = F.relu(F.linear(rmsnorm(x), self.mlp_fc1))  # (B, T, 4C)
        return F.linear(h, self.mlp_fc2) + x  # (B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); position t attends to positions 0..t of its own document."""
        q, k, v = self._qkv(x)
        # softmax(q k^T / sqrt(hd)) v with the causal mask, as the book's cache does position by position.
        return self._finish(F.scaled_dot_product_attention(q, k, v, is_causal=True), x)

    def step(self, x: torch.Tensor, cache: list[torch.Tensor | None]) -> torch.Tensor:
        """(1, 1, C) at the next position -> (1, 1, C); appends its key and value to `cache` = [k, v]."""
        q, k, v = self._qkv(x)
        if cache[0] is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (1, H, t, hd)
        cache[0], cache[1] = k, v
        # One query over every cached position: nothing to mask.
        return self._finish(F.scaled_dot_product_attention(q, k, v), x)


class GPT(nn.Module):
    """The book's GPT (SPEC section 5) over a padded batch; parameters named as the book's state dict."""

    def __init__(self, config: Config, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.wte = nn.Parameter(weights["wte"])  # (vocab_size, C) token embeddings
        self.wpe = nn.Parameter(weights["wpe"])  # (block_size, C) position embeddings
        self.lm_head = nn.Parameter(weights["lm_head"])  # (vocab_size, C)
        self.layers: list[Block] = []
        for i in range(config.n_layer):
            prefix = f"layer{i}."
            block = Block(config.n_head, {k[len(prefix):]: w for k, w in weights.items() if k.startswith(prefix)})
            self.add_module(f"layer{i}", block)  # registered as layer{i}, so its weights are layer{i}.attn_wq, ...
            self.layers.append(block)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits of the next token at every position."""
        T = inputs.shape[1]
        x = rmsnorm(self.wte[inputs] + self.wpe[:T])  # (B, T, C)
        for block in self.layers:
            x = block(x)
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

    def next_logits(self, token_id: torch.Tensor, pos_id: int, cache: list[list[torch.Tensor | None]]) -> torch.Tensor:
        """The book's gpt(): one (1, 1) token at position pos_id -> (vocab_size,) logits; extends `cache`."""
        x = rmsnorm(self.wte[token_id] + self.wpe[pos_id])  # (1, 1, C)
        for block, layer_cache in zip(self.layers, cache, strict=True):
            x = block.step(x, layer_cache)
        return F.linear(x, self.lm_head).view(-1)  # (V,)


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

    def __init__(self, config: Config, vocab_size: int, rng: random.Random, device: str = "auto",
                 dtype: str = "float64", compile: bool = False) -> None:
        super().__init__(config, vocab_size, rng)
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}: pass --dtype {', '.join(DTYPES)}")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and config.batch_size % world_size:
            fits = [b for b in range(world_size, 4 * world_size + 1, world_size)]
            raise UserError(f"--batch-size {config.batch_size} does not split evenly over {world_size} processes: "
                            f"pick a multiple of {world_size} ({', '.join(map(str, fits))}, ...)")
        self.device = resolve_device(device, dtype, int(os.environ.get("LOCAL_RANK", "0")))
        if self.device.type == "cpu" and config.n_embd < SMALL_N_EMBD and "OMP_NUM_THREADS" not in os.environ:
            # Each operation on a 16-wide matrix takes microseconds; handing it to a thread pool
            # costs more than that (tens of times more on a busy machine), so stay on one thread.
            torch.set_num_threads(1)
        self.dtype = dtype
        # bfloat16 computes under autocast; what is stored and updated stays float32.
        store = torch.float32 if dtype == "bfloat16" else DTYPES[dtype]
        self._autocast = dtype == "bfloat16"
        self.pad_id = 0  # the token padded positions carry; any id gives the same result

        # One gauss per parameter, matrix by matrix, row by row: the book's order, so every
        # engine starts from the very same weights.
        self.shapes = param_shapes(config, vocab_size)
        total = sum(r * c for r, c in self.shapes.values())
        values = torch.tensor([rng.gauss(0, config.init_std) for _ in range(total)], dtype=torch.float64)
        self.flat = values.to(self.device, store)
        self.flat_grad = torch.zeros_like(self.flat)
        self.m = torch.zeros_like(self.flat)  # Adam's first moment
        self.v = torch.zeros_like(self.flat)  # Adam's second moment
        self.model = GPT(config, self._views(self.flat))
        self._params = list(self.model.parameters())
        # Gradients are views into flat_grad: backward accumulates into them in place, and
        # zero_grad keeps them, so they always exist.
        self._grads = list(self._views(self.flat_grad).values())
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

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> (n_out, n_in) view into `flat`, in the book's order."""
        views, offset = {}, 0
        for name, (r, c) in self.shapes.items():
            views[name] = flat[offset:offset + r * c].view(r, c)
            offset += r * c
        return views

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
    def step(self, lr_t: float, step: int) -> None:
        # The operations of microgpt.optim.Adam, element-wise on the flat tensors, in its order
        # (separate multiply and add: an `alpha=` argument may fuse them and round differently).
        c, p, g = self.config, self.flat, self.flat_grad
        if c.optimizer == "sgd":
            p.sub_(g * lr_t)
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
        p.sub_((m_hat * lr_t).div_(v_hat.sqrt().add_(c.eps_adam)))

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    # Evaluation and sampling.

    @torch.no_grad()
    def evaluate(self, tokens: list[int]) -> float:
        with self._precision():
            return self.model(*self._tensors([tokens])).item()

    def new_cache(self) -> list[list[torch.Tensor | None]]:
        return [[None, None] for _ in range(self.config.n_layer)]  # per layer: keys, values (1, H, t, hd)

    @torch.no_grad()
    def next_logits(self, token_id: int, pos_id: int, cache: Any) -> list[float]:
        token = torch.tensor([[token_id]], device=self.device)
        with self._precision():
            return self.model.next_logits(token, pos_id, cache).tolist()

    # State: plain name -> (n_out, n_in) float64 numpy arrays on the CPU.

    def _split(self, flat: torch.Tensor) -> dict[str, np.ndarray]:
        host = flat.detach().to("cpu", torch.float64, copy=True).numpy()  # a copy: later steps do not change it
        return {name: view.numpy() for name, view in self._views(torch.from_numpy(host)).items()}

    def _join(self, source: dict[str, Any], into: torch.Tensor) -> None:
        parts = []
        for name, shape in self.shapes.items():
            arr = np.asarray(source[name], dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
            parts.append(arr.reshape(-1))
        with torch.no_grad():
            into.copy_(torch.from_numpy(np.concatenate(parts)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return self._split(self.flat)

    def load_state_dict(self, weights: dict[str, Any]) -> None:
        self._join(weights, self.flat)

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        return {"m": self._split(self.m), "v": self._split(self.v), "grad": self._split(self.flat_grad)}

    def load_optimizer_state(self, state: dict[str, dict[str, Any]]) -> None:
        for key, into in (("m", self.m), ("v", self.v), ("grad", self.flat_grad)):
            self._join(state[key], into)

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
        del self.flat, self.flat_grad, self.m, self.v
        self._ddp = None
        gc.collect()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"

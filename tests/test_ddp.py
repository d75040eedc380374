"""Two processes (torchrun, gloo on CPU) train like one: the torch engine under DistributedDataParallel.

Each rank takes half of every step's global batch and DDP averages the gradients, so after a few
steps both ranks must hold identical weights, equal (float64, 1e-10) to one process that took each
global batch whole, and the reduced losses must equal that process's losses.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import NAMES

from microgpt.config import Config
from microgpt.data import load_docs
from microgpt.engines import create_engine
from microgpt.errors import UserError
from microgpt.tokenizer import Tokenizer
from microgpt.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(n_layer=1, n_embd=8, n_head=2, block_size=8, num_steps=4, batch_size=4)
NUM_DOCS = 64  # steps x batch_size = 16 documents are used; a few more keep the cycling honest

# Runs on every rank: build the engine from the environment torchrun sets, train, save what it holds.
DRIVER = textwrap.dedent("""
    import json, random, sys
    import numpy as np
    from microgpt.config import Config
    from microgpt.engines import create_engine
    from microgpt.tokenizer import Tokenizer
    from microgpt.train import train

    config, docs, out = Config(**json.loads(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine("torch", config, tokenizer.vocab_size, random.Random(config.seed), device="cpu")
    losses = []
    train(engine, docs, tokenizer, config, on_step=lambda step, loss, lr: losses.append(loss) and False,
          rank=engine.rank, world_size=engine.world_size)
    weights = engine.state_dict()
    np.save(f"{out}/weights{engine.rank}.npy", np.concatenate([w.ravel() for w in weights.values()]))
    np.save(f"{out}/losses{engine.rank}.npy", np.array(losses))
    with open(f"{out}/world{engine.rank}.json", "w") as f:
        json.dump([engine.rank, engine.world_size], f)
    engine.close()
""")


def single_process(config: Config, docs: list[str]) -> tuple[np.ndarray, list[float]]:
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine("torch", config, tokenizer.vocab_size, random.Random(config.seed), device="cpu")
    losses: list[float] = []
    train(engine, docs, tokenizer, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
    return np.concatenate([w.ravel() for w in engine.state_dict().values()]), losses


def test_two_processes_equal_one(tmp_path):
    docs = load_docs(NAMES)[:NUM_DOCS]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # --standalone: a private rendezvous on a free port, so concurrent runs never collide.
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(driver), json.dumps(CONFIG), json.dumps(docs), str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "terminate called" not in run.stderr  # a gloo process that aborted at exit

    assert [json.loads((tmp_path / f"world{r}.json").read_text()) for r in (0, 1)] == [[0, 2], [1, 2]]
    rank0, rank1 = np.load(tmp_path / "weights0.npy"), np.load(tmp_path / "weights1.npy")
    np.testing.assert_array_equal(rank0, rank1)

    want_weights, want_losses = single_process(Config(**CONFIG), docs)
    np.testing.assert_allclose(rank0, want_weights, rtol=0, atol=1e-10)
    for r in (0, 1):  # reduce_loss gives every rank the whole batch's mean loss
        np.testing.assert_allclose(np.load(tmp_path / f"losses{r}.npy"), want_losses, rtol=1e-12)


def test_batch_must_split_evenly_over_processes(monkeypatch):
    # The check comes before any process group is joined, so one process can prove it.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--batch-size 3 does not split evenly over 2 processes"):
        create_engine("torch", Config(batch_size=3), 27, random.Random(0), device="cpu")

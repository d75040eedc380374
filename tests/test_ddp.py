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

import numpy as np
import pytest

pytest.importorskip("torch", reason="the torch engine needs PyTorch (pip install -e \".[torch]\")")

from conftest import NAMES, SRC, LossRecorder, start_run, write_docs  # noqa: E402

from microgpt.config import Config  # noqa: E402
from microgpt.data import load_docs  # noqa: E402
from microgpt.engines import create_engine  # noqa: E402
from microgpt.errors import UserError  # noqa: E402
from microgpt.train import train  # noqa: E402

pytestmark = pytest.mark.torch

CONFIG = dict(n_layer=1, n_embd=8, n_head=2, block_size=8, num_steps=4, batch_size=4)
NUM_DOCS = 64  # steps x batch_size = 16 documents are used; a few more keep the cycling honest

# Runs on every rank: the same start as training, the engine from the environment torchrun sets,
# the training loop (which hands each rank its slice), then save what the rank holds.
DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from microgpt.config import Config
    from microgpt.data import prepare
    from microgpt.engines import create_engine
    from microgpt.train import train

    config, data_file, out = Config(**json.loads(sys.argv[1])).validate(), sys.argv[2], sys.argv[3]
    data, rng = prepare(config, data_file)
    engine = create_engine("torch", config, data.tokenizer.vocab_size, rng, device="cpu")
    losses = []
    train(engine, data, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
    weights = engine.state_dict()
    np.save(f"{out}/weights{engine.rank}.npy", np.concatenate([w.ravel() for w in weights.values()]))
    np.save(f"{out}/losses{engine.rank}.npy", np.array(losses))
    with open(f"{out}/world{engine.rank}.json", "w") as f:
        json.dump([engine.rank, engine.world_size], f)
    engine.close()
""")


def single_process(config: Config, data_file) -> tuple[np.ndarray, list[float]]:
    engine, data, _ = start_run("torch", config, data_file, device="cpu")
    recorder = LossRecorder()
    train(engine, data, config, on_step=recorder)
    return np.concatenate([w.ravel() for w in engine.state_dict().values()]), recorder.losses


def test_two_processes_equal_one(tmp_path):
    data_file = write_docs(tmp_path / "docs.txt", load_docs(NAMES)[:NUM_DOCS])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    # --standalone: a private rendezvous on a free port, so concurrent runs never collide.
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(driver), json.dumps(CONFIG), str(data_file), str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "terminate called" not in run.stderr  # a gloo process that aborted at exit

    assert [json.loads((tmp_path / f"world{r}.json").read_text()) for r in (0, 1)] == [[0, 2], [1, 2]]
    rank0, rank1 = np.load(tmp_path / "weights0.npy"), np.load(tmp_path / "weights1.npy")
    np.testing.assert_array_equal(rank0, rank1)

    want_weights, want_losses = single_process(Config(**CONFIG), data_file)
    np.testing.assert_allclose(rank0, want_weights, rtol=0, atol=1e-10)
    for r in (0, 1):  # reduce_loss gives every rank the whole batch's mean loss
        np.testing.assert_allclose(np.load(tmp_path / f"losses{r}.npy"), want_losses, rtol=1e-12)


def test_batch_must_split_evenly_over_processes(monkeypatch):
    # The check comes before any process group is joined, so one process can prove it.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--batch-size 3 does not split evenly over 2 processes"):
        create_engine("torch", Config(batch_size=3), 27, random.Random(0), device="cpu")

"""`torchrun -m microgpt train --engine torch`: two gloo processes equal one process.

The same global batch split over two ranks must give the same weights as one process taking it
whole (float64, 1e-10); only rank 0 prints, logs metrics and writes the checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import NAMES
from safetensors.numpy import load_file

from microgpt.checkpoint import load_checkpoint

COMMON = ["train", "--engine", "torch", "--device", "cpu", "--dtype", "float64", "--n-embd", "8", "--n-head", "2",
          "--block-size", "8", "--steps", "5", "--batch-size", "4", "--num-samples", "3", "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _weights(out) -> dict:
    ckpt = load_checkpoint(out)
    return load_file(str(out / ckpt.meta["state_file"]))


def test_two_processes_equal_one(tmp_path):
    data = tmp_path / "names.txt"
    data.write_text("\n".join(NAMES.read_text().splitlines()[:500]) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "microgpt", *COMMON, "--data", str(data), "--out", str(one),
                             "--metrics", str(tmp_path / "one.jsonl")],
                            capture_output=True, text=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "microgpt", *COMMON, "--data", str(data), "--out", str(two),
                            "--metrics", str(tmp_path / "two.jsonl")],
                           capture_output=True, text=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)
    assert multi.returncode == 0, multi.stderr
    assert "terminate called" not in multi.stderr

    # Rank 0 alone prints: one header and one set of samples.
    assert multi.stdout.count("num docs:") == 1
    assert multi.stdout.count("sample  1:") == 1
    assert [line for line in multi.stdout.splitlines() if line.startswith("sample")] == \
           [line for line in single.stdout.splitlines() if line.startswith("sample")]

    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-10, err_msg=name)

    # One metrics line per step, written once, with the global (all-reduced) loss.
    steps_one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()[1:]]
    steps_two = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in steps_two] == [1, 2, 3, 4, 5]
    for r1, r2 in zip(steps_one, steps_two):
        assert abs(r1["loss"] - r2["loss"]) < 1e-12

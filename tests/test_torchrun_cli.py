"""`torchrun -m microgpt train --engine torch`: two gloo processes equal one process.

The same global batch split over two ranks must give the same weights as one process taking it
whole (float64, 1e-10); only rank 0 prints, logs metrics and writes the checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="torchrun comes with PyTorch (pip install -e \".[torch]\")")

from conftest import NAMES, final_state, run_headers, samples_of, step_records  # noqa: E402

pytestmark = pytest.mark.torch

# Statistics every 2 steps: each rank computes them on its own weights, which DDP keeps identical.
COMMON = ["train", "--engine", "torch", "--device", "cpu", "--dtype", "float64", "--n-embd", "8", "--n-head", "2",
          "--block-size", "8", "--steps", "5", "--batch-size", "4", "--num-samples", "3", "--quiet",
          "--stats-every", "2"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


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
    assert samples_of(multi.stdout) == samples_of(single.stdout) and len(samples_of(single.stdout)) == 3

    a, b = final_state(one), final_state(two)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-10, err_msg=name)

    # One metrics line per step, written once (one header), with the global (all-reduced) loss.
    assert len(run_headers(tmp_path / "two.jsonl")) == 1
    steps_one, steps_two = step_records(tmp_path / "one.jsonl"), step_records(tmp_path / "two.jsonl")
    assert [r["step"] for r in steps_two] == [1, 2, 3, 4, 5]
    for r1, r2 in zip(steps_one, steps_two, strict=True):
        assert abs(r1["loss"] - r2["loss"]) < 1e-12
        assert ("stats" in r1) == ("stats" in r2) == (r1["step"] % 2 == 0)
        for name, numbers in r1.get("stats", {}).items():
            np.testing.assert_allclose(r2["stats"][name], numbers, rtol=1e-9, err_msg=name)

"""The book engine (`microgpt.engines.scalar`) as a whole: a run is a pure function of its config.

Its numbers against the golden figures, including the faithful 1,000-step run of SPEC section 8,
are checked with every other engine's in test_parity.py. What is left here is the book engine's
own: determinism, the seed, the cycle collector it pauses, and the options it refuses.
"""

from __future__ import annotations

import gc
import random

import pytest
from conftest import SPEC_FIRST_LOSSES, default_run

from microgpt.config import Config
from microgpt.engines.scalar import ScalarEngine, no_cycle_collection


def short_run(**overrides) -> dict:
    return default_run("scalar", Config(num_steps=5, num_samples=3, **overrides))


def test_short_runs_are_deterministic():
    first, second = short_run(), short_run()
    assert first["losses"] == second["losses"]  # bit for bit
    assert first["samples"] == second["samples"]
    assert first["engine"].state_dict() == second["engine"].state_dict()
    # Step 1 trains at lr_t = lr * (1 - 0/num_steps) = lr whatever num_steps is, so the first two
    # losses are the default run's.
    assert [round(x, 4) for x in first["losses"][:2]] == SPEC_FIRST_LOSSES[:2]


def test_a_different_seed_gives_a_different_run():
    base, other = short_run(), short_run(seed=43)
    assert len(other["losses"]) == 5
    assert all(a != b for a, b in zip(base["losses"], other["losses"]))


def test_no_cycle_collection_pauses_and_restores_the_collector():
    assert gc.isenabled()
    with no_cycle_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with no_cycle_collection():
            pass
        assert not gc.isenabled()  # a collector the caller had switched off stays off
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), no_cycle_collection():
        raise RuntimeError("the collector comes back on the way out of an error too")
    assert gc.isenabled()


def test_its_parameters_are_the_book_values_the_optimizer_updates():
    engine = ScalarEngine(Config(n_embd=8, n_head=2, block_size=8), 9, random.Random(1))
    assert len(engine.params) == engine.num_params == sum(len(r) * len(r[0]) for r in engine.state_dict().values())
    # The flat list is the state dict's Values themselves, in the layout's order.
    flat = [p for mat in engine.params_by_name.values() for row in mat for p in row]
    assert all(a is b for a, b in zip(flat, engine.params, strict=True))
    assert engine.optimizer.params is engine.params

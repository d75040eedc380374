"""What every engine shares (`microgpt.engines.base`): the one parameter layout, the one draw of the
initial weights, the one shape check, and the registry.

The oracles: SPEC section 4's shapes and order written out here, the book's own `init_params`
drawing from a twin generator, and the source of the engine modules read as syntax trees.
"""

from __future__ import annotations

import argparse
import ast
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import engine_params, requires_torch

import microgpt.engines
from microgpt.config import Config
from microgpt.engines import ENGINES, create_engine, engine_options
from microgpt.engines.base import Layout, ShapeError, check_shapes, initial_values, param_shapes
from microgpt.errors import UserError
from microgpt.model import init_params

CONFIGS = [Config(), Config(n_layer=3, n_embd=12, n_head=3, block_size=5), Config(n_layer=2, n_embd=4, n_head=1,
                                                                                  block_size=9)]
IDS = ["book", "three-layers", "two-layers"]


def spec_shapes(config: Config, vocab_size: int) -> list[tuple[str, tuple[int, int]]]:
    """SPEC section 4, written out: name and (n_out, n_in) of every matrix, in creation order."""
    e = config.n_embd
    shapes = [("wte", (vocab_size, e)), ("wpe", (config.block_size, e)), ("lm_head", (vocab_size, e))]
    for i in range(config.n_layer):
        shapes += [(f"layer{i}.attn_w{x}", (e, e)) for x in "qkvo"]
        shapes += [(f"layer{i}.mlp_fc1", (4 * e, e)), (f"layer{i}.mlp_fc2", (e, 4 * e))]
    return shapes


# --- the layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_layout_follows_the_book_order_and_packs_the_matrices(config):
    layout = Layout.of(config, 27)
    assert list(layout.shapes.items()) == spec_shapes(config, 27) == list(param_shapes(config, 27).items())
    # Each matrix starts where the one before it ends; together they fill the flat array.
    offset = 0
    for name, (rows, cols) in spec_shapes(config, 27):
        assert layout.offsets[name] == offset, name
        assert layout.span(name) == slice(offset, offset + rows * cols)
        offset += rows * cols
    assert layout.total == offset
    assert list(layout.offsets) == list(layout.shapes)


def test_the_book_model_has_4192_parameters():
    assert Layout.of(Config(), 27).total == 4192  # SPEC section 4


def test_span_over_several_matrices():
    layout = Layout.of(Config(n_layer=2), 27)
    qkv = layout.span("layer1.attn_wq", "layer1.attn_wv")
    assert qkv.start == layout.offsets["layer1.attn_wq"]
    assert qkv.stop == layout.offsets["layer1.attn_wo"] == qkv.start + 3 * 16 * 16


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_views_are_row_major_windows_into_the_flat_array(config):
    layout = Layout.of(config, 7)
    flat = np.arange(layout.total, dtype=np.float64)
    views = layout.views(flat)
    assert list(views) == list(layout.shapes)
    for name, (rows, cols) in layout.shapes.items():
        view, start = views[name], layout.offsets[name]
        assert view.shape == (rows, cols)
        assert np.shares_memory(view, flat), name  # a view, not a copy
        for r in (0, rows - 1):
            for c in (0, cols - 1):
                assert view[r, c] == start + r * cols + c, (name, r, c)
    views["wpe"][1, 2] = -1.0  # writing through a view writes the flat array
    assert flat[layout.offsets["wpe"] + 1 * config.n_embd + 2] == -1.0


@requires_torch
def test_views_of_a_torch_tensor_share_its_storage():
    import torch

    layout = Layout.of(Config(n_embd=8, n_head=2), 5)
    flat = torch.zeros(layout.total, dtype=torch.float64)
    views = layout.views(flat)
    views["lm_head"][4, 7] = 3.0
    assert flat[layout.offsets["lm_head"] + 4 * 8 + 7].item() == 3.0
    assert views["layer0.mlp_fc2"].shape == (8, 32)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_rows_cut_a_plain_list_as_views_cut_an_array(config):
    layout = Layout.of(config, 6)
    flat = [float(i) for i in range(layout.total)]
    rows = layout.rows(flat)
    views = layout.views(np.array(flat))
    assert list(rows) == list(views)
    for name in rows:
        assert rows[name] == views[name].tolist(), name


# --- the initial weights --------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_initial_values_are_the_books_init_params_in_order(config):
    values = initial_values(config, 9, random.Random(5))
    book = init_params(config, 9, random.Random(5))
    assert values == [p.data for mat in book.values() for row in mat for p in row]  # exactly, in order
    assert len(values) == Layout.of(config, 9).total


def test_initial_values_draw_one_gauss_per_parameter_and_nothing_else():
    config = Config(n_layer=2, init_std=0.3)
    rng, twin = random.Random(8), random.Random(8)
    values = initial_values(config, 11, rng)
    assert values == [twin.gauss(0, 0.3) for _ in range(Layout.of(config, 11).total)]
    assert rng.getstate() == twin.getstate()  # not one draw more or fewer


def test_the_book_defaults_start_where_spec_section_1_says():
    """After the shuffle, the weights are the next 4192 gauss(0, 0.08) draws of Random(42)."""
    rng = random.Random(42)
    rng.shuffle(list(range(32033)))
    twin = random.Random()
    twin.setstate(rng.getstate())
    values = initial_values(Config(), 27, rng)
    assert values[:3] == [twin.gauss(0, 0.08) for _ in range(3)]


@pytest.mark.parametrize("engine", engine_params())
def test_every_engine_starts_from_initial_values(engine):
    config = Config(n_layer=2, n_embd=8, n_head=2, block_size=6)
    rng = random.Random(3)
    built = create_engine(engine, config, 10, rng)
    twin = random.Random(3)
    want = Layout.of(config, 10).rows(initial_values(config, 10, twin))
    got = built.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert np.array_equal(np.asarray(got[name], dtype=np.float64), np.array(want[name])), name
    assert rng.getstate() == twin.getstate()  # the engine drew exactly the initial values
    built.close()


ENGINE_SOURCES = sorted(Path(microgpt.engines.__file__).parent.glob("*.py"))


def gauss_calls(path: Path) -> list[int]:
    """Lines of `path` that call a method named gauss (rng.gauss(...), random.gauss(...), ...)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "gauss"]


def test_the_gauss_scan_sees_a_call(tmp_path):
    source = tmp_path / "engine.py"
    source.write_text("import random\n\ndef init(rng):\n    x = 1\n    return [rng.gauss(0, 1), random.gauss(0, 2)]\n")
    assert gauss_calls(source) == [5, 5]
    assert len(gauss_calls(Path(microgpt.engines.__file__).parents[1] / "model.py")) == 1  # the book's matrix()


@pytest.mark.parametrize("path", ENGINE_SOURCES, ids=[p.name for p in ENGINE_SOURCES])
def test_no_engine_draws_its_own_initial_weights(path):
    """initial_values (base.py) is the one place engines draw initial weights: no other engine module calls gauss."""
    calls = gauss_calls(path)
    if path.name == "base.py":
        assert len(calls) == 1, "initial_values should be base.py's one gauss call"
    else:
        assert calls == [], f"{path.name} calls gauss on lines {calls}: use engines.base.initial_values"


def test_every_registered_engine_module_is_scanned():
    scanned = {p.stem for p in ENGINE_SOURCES}
    for module, *_ in ENGINES.values():
        assert module.rsplit(".", 1)[1] in scanned, module


# --- the shape check --------------------------------------------------------------------------------


SHAPES = {"wte": (3, 4), "lm_head": (3, 4)}


def good() -> dict:
    return {"wte": [[0.0] * 4 for _ in range(3)], "lm_head": np.zeros((3, 4))}


def test_check_shapes_accepts_nested_lists_and_arrays():
    check_shapes(good(), SHAPES)
    check_shapes({**good(), "extra": [[1.0]]}, SHAPES)  # only the named matrices are checked


@pytest.mark.parametrize("change, words", [
    (lambda w: w.pop("wte"), ["wte is missing", "3x4"]),
    (lambda w: w.update(wte=np.zeros((4, 3))), ["wte has shape (4, 3)", "expected (3, 4)"]),
    (lambda w: w.update(lm_head=np.zeros(12)), ["lm_head has shape (12,)"]),
    (lambda w: w.update(wte=[[0.0] * 4, [0.0] * 4, [0.0] * 3]), ["wte has shape (3, -1)"]),  # ragged rows
    (lambda w: w.update(wte=[]), ["wte has shape (0,)"]),
    (lambda w: w.update(lm_head=np.zeros((3, 4, 1))), ["lm_head has shape (3, 4, 1)"]),
], ids=["missing", "transposed", "flat", "ragged", "empty", "three-d"])
def test_check_shapes_names_the_first_matrix_that_does_not_fit(change, words):
    weights = good()
    change(weights)
    with pytest.raises(ShapeError) as info:
        check_shapes(weights, SHAPES)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_check_shapes_prefixes_the_name():
    with pytest.raises(ShapeError, match=r"^m\.wte is missing"):
        check_shapes({}, SHAPES, "m.")


@pytest.mark.parametrize("engine", engine_params())
def test_engines_refuse_weights_of_another_shape(engine):
    config = Config(n_embd=8, n_head=2, block_size=8)
    built = create_engine(engine, config, 9, random.Random(0))
    before = {k: np.array(v, dtype=np.float64) for k, v in built.state_dict().items()}
    weights = {k: np.zeros_like(v) for k, v in before.items()}
    weights["layer0.mlp_fc1"] = np.zeros((8, 32))  # transposed
    with pytest.raises(ShapeError, match="layer0.mlp_fc1"):
        built.load_state_dict(weights)
    state = built.optimizer_state()
    state["v"] = {k: v for k, v in state["v"].items() if k != "wpe"}
    with pytest.raises(ShapeError, match=r"v\.wpe is missing"):
        built.load_optimizer_state(state)
    after = built.state_dict()
    for name in before:  # a refused load changes nothing
        assert np.array_equal(np.asarray(after[name], dtype=np.float64), before[name]), name
    built.close()


# --- the registry and the engines' options -------------------------------------------------------


def test_registry_entries_name_a_module_a_class_an_install_hint_and_options():
    for name, (module, cls, install, options) in ENGINES.items():
        assert module.startswith("microgpt.engines."), name
        assert cls and isinstance(options, dict), name
        assert name == "scalar" or install, f"{name} needs an install hint"


def test_engine_options_layer_defaults_saved_and_given():
    args = argparse.Namespace(dtype="float32")
    assert engine_options(args, "torch", {"device": "cpu", "dtype": "bfloat16", "bogus": 1}) == {
        "device": "cpu", "dtype": "float32", "compile": False, "threads": 0}
    assert engine_options(argparse.Namespace(), "scalar") == {}
    assert engine_options(argparse.Namespace(threads=2), "numpy") == {"threads": 2}


def test_engine_options_refuse_a_flag_the_engine_does_not_take():
    with pytest.raises(UserError, match="--dtype applies to the torch engine only: add --engine torch"):
        engine_options(argparse.Namespace(dtype="float32"), "numpy")
    with pytest.raises(UserError, match="--threads applies to the numpy and torch engines only"):
        engine_options(argparse.Namespace(threads=2), "scalar")
    with pytest.raises(UserError, match="--threads must be 0"):
        engine_options(argparse.Namespace(threads=-1), "numpy")
    with pytest.raises(UserError, match="unknown engine 'jax'"):
        engine_options(argparse.Namespace(), "jax")


def test_unknown_engine_is_a_user_error():
    with pytest.raises(UserError, match="pick one of " + ", ".join(ENGINES)):
        create_engine("jax", Config(), 27, random.Random(0))


@pytest.mark.parametrize("name, says", [("scalar", "the scalar engine has no dropout (the book's model has none)"),
                                        ("numpy", "the numpy engine has no dropout yet")])
def test_engines_without_dropout_refuse_it_naming_the_one_with_it(name, says):
    with pytest.raises(UserError) as refused:
        create_engine(name, Config(dropout=0.1), 27, random.Random(0))
    assert str(refused.value) == f"{says}: use --engine torch, or drop --dropout"

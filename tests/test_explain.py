"""`microgpt explain`, `microgpt trace` and the page's own JavaScript, each against an oracle nobody here wrote.

The oracles: the checkpoint's safetensors files and metrics lines read directly, the shuffle redone
from the dataset, the book engine's graph walked here, `microgpt sample` itself, the NumPy and
scalar engines, and Python's `random.Random`. The page's JavaScript (its forward pass and its
Mersenne Twister) runs in a headless Chromium through Playwright; those tests skip with a reason
when Chromium or Playwright is missing, except under CI=true, where they must run.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import shutil
import struct
import warnings
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NAMES,
    SPEC_SAMPLES,
    OpenPage,
    assert_one_line_error,
    needs_browser,
    run_cli,
    run_module,
    samples_of,
    train_run,
)
from safetensors.numpy import load_file

from microgpt.checkpoint import load_checkpoint
from microgpt.config import Config
from microgpt.data import load_docs, load_text, shuffled
from microgpt.engines.base import param_shapes
from microgpt.evaluate import load_model
from microgpt.model import document_loss, init_params
from microgpt.sample import sample_probs
from microgpt.tokenizer import Tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the pages of the runs (conftest.py trains them) ---------------------------------------------


def explain(folder: Path, *flags, name: str = "explain.html") -> Path:
    out = folder / name
    if not out.is_file():
        rc, _, err = run_cli("explain", folder, "-o", out, *flags)
        assert rc == 0, err
    return out


def page_json(path: Path) -> dict:
    """The data the page embeds, read back from its script element."""
    html = path.read_text(encoding="utf-8")
    match = re.search(r'<script id="run-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="session")
def book_page(book) -> Path:
    return explain(book)


@pytest.fixture(scope="module")
def book_tab(browser, book_page) -> OpenPage:
    return OpenPage(browser, book_page)


def decode_floats(b64: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f8" if dtype == "float64" else "<f4")


def training_docs() -> list[str]:
    """The book's training order, redone here: the documents shuffled once by random.Random(42)."""
    return shuffled(load_docs(NAMES), random.Random(42))


# --- what the page embeds ------------------------------------------------------------------------


def test_page_embeds_every_snapshot_bit_for_bit(book, book_page):
    data = page_json(book_page)
    assert data["dtype"] == "float64"
    assert [s["step"] for s in data["snapshots"]] == list(range(0, 1001, 100))
    names = [name for name, _, _ in data["shapes"]]
    assert names == list(param_shapes(Config(), 27))
    for snap in data["snapshots"]:
        step = snap["step"]
        # Read with safetensors directly; step 1000 is also the state file's weights.
        tensors = load_file(book / "snapshots" / f"step-{step:07d}.safetensors")
        expected = np.concatenate([tensors[name].ravel() for name in names])
        assert np.array_equal(decode_floats(snap["weights"], "float64"), expected), step
    state = load_file(book / json.loads((book / "checkpoint.json").read_text())["state_file"])
    final = np.concatenate([state[name].ravel() for name in names])
    assert np.array_equal(decode_floats(data["snapshots"][-1]["weights"], "float64"), final)


def test_page_embeds_the_metrics_and_the_generator(book, book_page):
    data = page_json(book_page)
    records = [json.loads(line) for line in (book / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    t = data["training"]
    assert t["steps"] == [r["step"] for r in steps] == list(range(1, 1001))
    assert t["loss"] == [r["loss"] for r in steps]
    assert t["lr"] == [r["lr"] for r in steps]
    assert round(t["loss"][0], 4) == 3.3660 and round(t["loss"][-1], 4) == 2.6497  # SPEC section 8
    assert t["uniform"] == math.log(27)
    # Matrix statistics, every step, as float32.
    names = [name for name, _, _ in data["shapes"]]
    stats = decode_floats(data["stats"]["values"], "float32").reshape(len(data["stats"]["steps"]), len(names), 4)
    assert data["stats"]["steps"] == [r["step"] for r in steps if "stats" in r]
    expected = np.array([[r["stats"][n] for n in names] for r in steps if "stats" in r], dtype=np.float32)
    assert np.array_equal(stats, expected)
    # The documents of the steps: the book's shuffle, redone here.
    docs = training_docs()
    assert t["train_docs"] == docs[:1000] and t["num_train_docs"] == len(docs)
    assert data["default_text"] == docs[0]
    assert data["rng_state"] == json.loads((book / "checkpoint.json").read_text())["rng_state"][1]
    assert data["train_set"].split("\n") == sorted(set(docs))


def test_page_is_one_file_that_needs_no_network(book_page):
    html = book_page.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    lowered = html.lower()
    for reference in ("<script src", "<link", "@import", "url(", "@font-face", "<iframe", "<img"):
        assert reference not in lowered, reference
    web = Path(__file__).resolve().parents[1] / "src" / "microgpt" / "web"
    for name in ("random.js", "model.js", "explain.js", "vendor/uPlot.iife.min.js", "explain.css"):
        assert (web / name).read_text(encoding="utf-8").strip() in html, name
    assert book_page.stat().st_size <= 1_500_000  # the book's run with 11 snapshots


def test_samples_at_every_snapshot_are_what_sample_prints(book, book_page):
    data = page_json(book_page)
    assert data["samples"]["seed"] == 42 and data["samples"]["count"] == 20
    for snap in data["snapshots"]:
        rc, out, err = run_cli("sample", "--checkpoint", book, "--snapshot", snap["step"], "--seed", 42)
        assert rc == 0, err
        assert snap["samples"] == samples_of(out), snap["step"]
    # The run's own samples: the checkpoint's generator continued, the book's 20 names.
    rc, out, _ = run_cli("sample", "--checkpoint", book)
    assert data["samples"]["final"] == samples_of(out) == SPEC_SAMPLES


def test_samples_are_judged_against_the_training_documents(book_page):
    data = page_json(book_page)
    known = set(load_docs(NAMES))
    for snap in data["snapshots"] + [{"samples": data["samples"]["final"], "marks": data["samples"]["final_marks"]}]:
        assert snap["marks"] == ["copy" if s in known else "new" for s in snap["samples"]]
    assert data["samples"]["final_marks"].count("new") >= 5  # the book's model makes up names


def test_snapshots_flag_picks_evenly_spaced_steps_and_seed_flag_reseeds(book, tmp_path):
    rc, out, err = run_cli("explain", book, "-o", tmp_path / "three.html", "--snapshots", 3, "--seed", 7)
    assert rc == 0, err
    assert "3 snapshots" in out
    data = page_json(tmp_path / "three.html")
    assert [s["step"] for s in data["snapshots"]] == [0, 500, 1000]
    rc, sampled, _ = run_cli("sample", "--checkpoint", book, "--snapshot", 500, "--seed", 7)
    assert data["snapshots"][1]["samples"] == samples_of(sampled)
    assert "--seed 7" in data["samples"]["command"]


def test_default_output_is_inside_the_checkpoint_folder(tmp_path):
    folder = train_run(tmp_path / "run", "--data", NAMES, "--steps", "200", "--n-embd", "8", "--n-head", "2")
    rc, out, err = run_cli("explain", folder)
    assert rc == 0, err
    assert (folder / "explain.html").is_file() and str(folder / "explain.html") in out
    assert not list(folder.glob(".*.tmp"))  # written atomically
    data = page_json(folder / "explain.html")
    assert [s["step"] for s in data["snapshots"]] == [0, 100, 200]


# --- the graph of one step ---------------------------------------------------------------------


def walk(root) -> list:
    """Every node below root once, by a plain search of the operands (no order needed to count)."""
    seen, todo = {id(root): root}, [root]
    while todo:
        for child in todo.pop()._children:
            if id(child) not in seen:
                seen[id(child)] = child
                todo.append(child)
    return list(seen.values())


def test_graph_counts_are_the_book_engines_graph(book_page):
    data = page_json(book_page)
    graph = data["graph"]
    config = Config()
    tokenizer = Tokenizer.from_docs(training_docs())
    # 1 to 7 positions (4 and more extrapolated from 1, 2 and 3); repeated letters, so fewer distinct tokens.
    for doc in ("", "a", "an", "ann", "anna", "yuheng"):
        params = init_params(config, 27, random.Random(1))
        tokens = tokenizer.example(doc)
        loss = document_loss(tokens, params, config)
        nodes = walk(loss)
        n_used = min(16, len(tokens) - 1)
        leaves = {id(v) for rows in params.values() for row in rows for v in row}
        counts: dict[str, int] = {}
        for node in nodes:
            key = node._op or ("parameters" if id(node) in leaves else "constants")
            counts[key] = counts.get(key, 0) + 1
        row = dict(zip(graph["ops"], graph["by_length"][n_used - 1]))
        assert row == {k: v for k, v in counts.items() if k != "parameters"}, (doc, n_used)
        # The page counts the parameters a document reaches from its tokens (explain.js drawGraphCounts).
        inputs = tokens[:n_used]
        assert counts["parameters"] == len(set(inputs)) * 16 + n_used * 16 + graph["other_params"]


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_one_line_naming_the_fix(book, tmp_path):
    cases = [
        (["explain", book, "--snapshots", "0", "-o", tmp_path / "a.html"], ["--snapshots", "at least 1"]),
        (["explain", book, "-o", tmp_path / "page.txt"], ["-o", ".html"]),
        (["explain", book, "-o", tmp_path / "missing" / "a.html"], ["does not exist"]),
        (["explain", tmp_path / "nowhere"], ["does not exist"]),
        (["explain", book, "--metrics", tmp_path / "none.jsonl", "-o", tmp_path / "a.html"], ["--metrics"]),
        (["explain", book, "--data", Path(__file__), "-o", tmp_path / "a.html"], ["--data"]),
        (["trace", "--checkpoint", book, "--text", "Emma"], ["'E'", "vocabulary"]),
        (["trace", "--checkpoint", book, "--text", "emma", "--snapshot", "150"], ["150", "pick one of"]),
        (["trace", "--checkpoint", book, "--text", "emma", "--attention-png", tmp_path / "a.jpg"], [".png"]),
    ]
    for args, words in cases:
        assert_one_line_error(run_cli(*args), *words)
    assert not list(tmp_path.glob("*.html"))


def test_a_checkpoint_without_its_metrics_names_the_flag(book, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(book, copy, ignore=shutil.ignore_patterns("*.html"))
    (copy / "metrics.jsonl").rename(tmp_path / "moved.jsonl")
    assert_one_line_error(run_module("explain", copy), "--metrics")
    rc, _, err = run_cli("explain", copy, "--metrics", tmp_path / "moved.jsonl", "--snapshots", 2)
    assert rc == 0, err


# --- text mode ---------------------------------------------------------------------------------


def test_text_mode_page_holds_windows_and_continuations(text_run):
    page = explain(text_run)
    data = page_json(page)
    checkpoint = load_checkpoint(text_run)
    tokenizer = Tokenizer(checkpoint.vocab)
    text = load_text(text_run.parent / "names-stream.txt")
    train_text = text[:len(text) - int(len(text) * 0.1)]  # the text mode's default --val-fraction 0.1
    records = [json.loads(line) for line in (text_run / "metrics.jsonl").read_text().splitlines()]
    offsets = [r["window"] for r in records if r["type"] == "step"]
    assert data["training"]["windows"] == [train_text[o:o + 17] for o in offsets]
    lines = set(train_text.split("\n"))
    assert [s["step"] for s in data["snapshots"]] == [0, 100, 200]
    for snap in data["snapshots"]:
        rc, out, err = run_cli("sample", "--checkpoint", text_run, "--snapshot", snap["step"], "--seed", 42,
                               "--max-tokens", 200)
        assert rc == 0, err
        [continuation] = snap["samples"]
        assert out.startswith("\n" + continuation + "\n") and len(continuation) == 200
        assert snap["marks"][0] == [[line, "blank" if not line.strip() else "copy" if line in lines else "new"]
                                    for line in continuation.split("\n")]
    assert data["default_text"] == train_text[:17]
    assert tokenizer.BOS == data["bos"]


def test_a_text_without_newlines_is_continued_from_the_default_prompt(tmp_path):
    """The page samples as `microgpt sample` does, from its default prompt, which is a space here."""
    data = tmp_path / "one-line.txt"
    data.write_text("the cat sat on the mat and the dog sat on the log " * 40, encoding="utf-8")
    folder = train_run(tmp_path / "run", "--data", data, "--data-format", "text", "--steps", 20,
                       "--checkpoint-every", 20)
    page = page_json(explain(folder))
    assert page["default_prompt"] == " "
    rc, out, err = run_cli("sample", "--checkpoint", folder, "--snapshot", 20, "--seed", 42, "--max-tokens", 200)
    assert rc == 0, err
    [continuation] = page["snapshots"][-1]["samples"]
    assert out.startswith(" " + continuation)


# --- trace -----------------------------------------------------------------------------------


def trace_rows(stdout: str) -> list[list[str]]:
    """The table rows `microgpt trace` printed, split into columns."""
    rows = []
    for line in stdout.splitlines():
        if re.match(r"^\s+\d+\s", line):
            rows.append(line.split())
    return rows


def numpy_prediction(folder: Path, text: str, step: int | None = None):
    """`text` as the prediction table takes it, through the NumPy engine at `step`: the checkpoint's
    tokenizer, the text's tokens (block_size + 1 at most), the engine, and the softmax of its logits
    at every position of tokens[:-1]."""
    checkpoint = load_checkpoint(folder)
    tokenizer = Tokenizer(checkpoint.vocab)
    tokens = tokenizer.example(text)[:17]
    engine, _ = load_model(checkpoint, "numpy", step=step)
    logits = engine.logits(tokens[:-1])
    p = np.exp(logits - logits.max(1, keepdims=True))
    return tokenizer, tokens, engine, p / p.sum(1, keepdims=True)


def scalar_probabilities(checkpoint, tokens: list[int], step: int | None = None) -> list[list[float]]:
    """The book engine, one position at a time with its key/value cache: softmax of each position's logits."""
    engine, _ = load_model(checkpoint, "scalar", step=step)
    cache = engine.new_cache()
    out = []
    for pos, token in enumerate(tokens[:-1]):
        logits = engine.next_logits(token, pos, cache)
        m = max(logits)
        e = [math.exp(z - m) for z in logits]
        out.append([x / sum(e) for x in e])
    return out


@pytest.mark.parametrize("text, step", [("emma", None), ("emma", 300), ("christophersonian", None), ("", 0)])
def test_trace_prints_the_engines_probabilities(book, text, step):
    flags = ["--snapshot", step] if step is not None else []
    rc, out, err = run_cli("trace", "--checkpoint", book, "--text", text, *flags)
    assert rc == 0, err
    tokenizer, tokens, numpy_engine, numpy_p = numpy_prediction(book, text, step)
    book_p = scalar_probabilities(load_checkpoint(book), tokens, step)
    rows = trace_rows(out)
    assert len(rows) == len(tokens) - 1 == min(16, len(text) + 1)
    for pos, row in enumerate(rows):
        target = tokens[pos + 1]
        printed = float(row[3])
        for p in (numpy_p[pos][target], book_p[pos][target]):
            assert abs(printed - p) <= 0.5e-4 + 1e-12, (pos, printed, p)
        assert float(row[4]) == pytest.approx(-math.log(book_p[pos][target]), abs=0.5e-4 + 1e-12)
        # The five likeliest, in order, as the book engine ranks them.
        ranked = sorted(range(27), key=lambda i: -book_p[pos][i])[:5]
        names = row[5::2]
        assert names == ["<BOS>" if i == 26 else tokenizer.chars[i] for i in ranked]
    mean = float(re.search(r"mean loss (\d+\.\d+)", out).group(1))
    assert mean == pytest.approx(numpy_engine.evaluate(tokens), abs=0.5e-4 + 1e-12)
    if len(text) + 1 > 16:
        assert "first 16 predictions" in err


def test_trace_draws_the_attention_png(book, tmp_path):
    png = tmp_path / "attention.png"
    rc, out, err = run_cli("trace", "--checkpoint", book, "--text", "emma", "--attention-png", png)
    assert rc == 0, err
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    assert width > 4 * 100 and height > 100  # four heads side by side
    assert not list(tmp_path.glob(".*.tmp"))
    from PIL import Image

    colours = Image.open(png).convert("RGB").getcolors(1 << 20)
    assert len(colours) > 50  # heatmaps, not a blank canvas


# --- the page's JavaScript, in Chromium -------------------------------------------------------


RANDOM_JS = """([seed, state, weights, count]) => {
  const rng = new PyRandom();
  if (state === null) rng.seed(BigInt(seed)); else rng.setState(state);
  const randoms = [];
  for (let i = 0; i < count; i++) randoms.push(rng.random());
  const draws = [];
  for (let i = 0; i < count; i++) draws.push(rng.choices(weights));
  return {randoms, draws, state: rng.getState()};
}"""


@needs_browser
def test_javascript_random_is_pythons(book_tab):
    weights = [0.0, 0.5, 1e-9, 3.25, 0.0, 2.0, 1.0]
    for seed in (0, 1, 42, 2 ** 32 - 1, 2 ** 32, 2 ** 63 + 12345, 2 ** 64 - 1):
        rng = random.Random(seed)
        got = book_tab.evaluate(RANDOM_JS, [str(seed), None, weights, 200])
        assert got["randoms"] == [rng.random() for _ in range(200)], seed
        assert got["draws"] == [rng.choices(range(len(weights)), weights=weights)[0] for _ in range(200)], seed
        assert got["state"] == list(rng.getstate()[1]), seed
    # setstate in the middle of the 624 words, as a checkpoint saves it.
    rng = random.Random(7)
    [rng.random() for _ in range(101)]
    state = list(rng.getstate()[1])
    got = book_tab.evaluate(RANDOM_JS, ["0", state, weights, 700])
    assert got["randoms"] == [rng.random() for _ in range(700)]
    assert got["draws"] == [rng.choices(range(len(weights)), weights=weights)[0] for _ in range(700)]


@needs_browser
def test_javascript_sums_left_to_right_as_sampling_does(book_tab):
    """sample_probs sums left to right from 0 (SPEC 9), on every Python: the page must too."""
    rng = random.Random(5)
    lists = [[rng.random() * 10 ** rng.randint(-20, 3) for _ in range(rng.randint(1, 40))] for _ in range(200)]
    lists += [[1e16, 1.0, -1e16, 1.0], [0.1] * 10, [1.0, 1e-16, 1e-16, 1e-16, -1.0]]

    def left_to_right(values: list[float]) -> float:
        total = 0.0
        for x in values:
            total += x
        return total

    got = book_tab.evaluate("(lists) => lists.map((v) => sumLeftToRight(v))", lists)
    assert got == [left_to_right(values) for values in lists]
    # The oracle is not Python's sum() by accident: on these lists a compensated sum would differ.
    assert left_to_right([1e16, 1.0, -1e16, 1.0]) == 1.0


FORWARD_JS = """([index, docs]) => docs.map((tokens) => {
  const {logits, attention} = explainPage.modelAt(index).forward(tokens);
  return {logits, attention};
})"""


@needs_browser
def test_javascript_forward_pass_is_the_numpy_engines(book, book_tab):
    checkpoint = load_checkpoint(book)
    tokenizer = Tokenizer(checkpoint.vocab)
    docs = training_docs()
    chosen = docs[:17] + [max(docs, key=len), "a", ""]  # one longer than block_size, the shortest ones
    examples = [tokenizer.example(d)[:17] for d in chosen]
    steps = [s["step"] for s in book_tab.evaluate("explainPage.data.snapshots.map((s) => ({step: s.step}))")]
    for step in (0, 500, 1000):
        engine, _ = load_model(checkpoint, "numpy", step=step)
        got = book_tab.evaluate(FORWARD_JS, [steps.index(step), [t[:-1] for t in examples]])
        for tokens, page in zip(examples, got):
            inputs = tokens[:-1]
            np.testing.assert_allclose(np.array(page["logits"]), engine.logits(inputs), rtol=0, atol=1e-12)
            for layer, heads in zip(engine.attention(inputs), page["attention"]):
                for h, rows in enumerate(heads):
                    for t, row in enumerate(rows):
                        np.testing.assert_allclose(row, layer[h, t, :t + 1], rtol=0, atol=1e-12)
                        assert not layer[h, t, t + 1:].any()


SAMPLE_JS = """([index, seed, state, temperature, topK, count]) => {
  const page = explainPage;
  const rng = new PyRandom();
  if (state === null) rng.seed(BigInt(seed)); else rng.setState(state);
  const out = [];
  for (let i = 0; i < count; i++) {
    const draws = [];
    const ids = sampleDocument(page.modelAt(index), rng, temperature, topK, [], page.data.bos,
      (pos, probs, token) => draws.push({pos, probs, token}));
    out.push({text: page.decode(ids.filter((i) => i !== page.data.bos)), draws});
  }
  return out;
}"""


def close_calls(page_docs: list[dict], engine, rng: random.Random, temperature: float, top_k: int) -> list[str]:
    """Replay the page's draws with the NumPy engine and Python's generator, along the page's path.

    JavaScript's Math.exp may differ from C's in the last bit, so the page's probabilities can differ
    from Python's by a rounding. A draw can only come out differently where the random number falls
    within that margin of a cumulative-weight boundary; each such draw is named here.
    """
    report = []
    for d, doc in enumerate(page_docs):
        cache, token = engine.new_cache(), engine.vocab_size - 1
        for draw in doc["draws"]:
            probs = sample_probs(engine.next_logits(token, draw["pos"], cache), temperature, top_k)
            cum_py, cum_js = list(accumulate(probs)), list(accumulate(draw["probs"]))
            x = rng.random() * cum_py[-1]
            mine = bisect_right(cum_py, x, 0, len(probs) - 1)
            rounding = max(abs(a - b) for a, b in zip(cum_py, cum_js))
            margin = min(abs(x - c) for c in cum_py[:-1])
            if mine != draw["token"] or margin <= 2 * rounding:
                report.append(f"document {d + 1} position {draw['pos']}: the random number lies {margin:.3g} from a "
                              f"boundary, the two probabilities differ by up to {rounding:.3g} (page drew "
                              f"{draw['token']}, Python {mine})")
            token = draw["token"]
    return report


def assert_page_draws(book, tab, index: int, step: int, seed: int | None, temperature: float, top_k: int,
                      cli_flags: list) -> None:
    checkpoint = load_checkpoint(book)
    state = list(checkpoint.rng_state()[1]) if seed is None else None
    got = tab.evaluate(SAMPLE_JS, [index, str(seed or 0), state, temperature, top_k, 20])
    rc, out, err = run_cli("sample", "--checkpoint", book, *cli_flags)
    assert rc == 0, err
    engine, _ = load_model(checkpoint, "numpy", step=step)
    rng = random.Random(seed)
    if seed is None:
        rng.setstate(checkpoint.rng_state())
    report = close_calls(got, engine, rng, temperature, top_k)
    texts = [doc["text"] for doc in got]
    if texts != samples_of(out):
        pytest.fail("the page drew other documents than `microgpt sample " + " ".join(map(str, cli_flags)) + "`; " +
                    ("close calls: " + "; ".join(report) if report else "no draw came near a boundary"))
    if report:
        warnings.warn("draws within rounding of a boundary (they agreed this time): " + "; ".join(report),
                      stacklevel=2)


@needs_browser
def test_javascript_draws_what_sample_prints(book, book_tab):
    # The final step from the checkpoint's generator: the book's 20 names.
    assert_page_draws(book, book_tab, 10, 1000, None, 0.5, 0, [])
    # Snapshots with a seed, and other temperatures and top-k.
    assert_page_draws(book, book_tab, 3, 300, 42, 0.5, 0, ["--snapshot", 300, "--seed", 42])
    assert_page_draws(book, book_tab, 0, 0, 42, 0.5, 0, ["--snapshot", 0, "--seed", 42])
    assert_page_draws(book, book_tab, 10, 1000, 3, 0.8, 5, ["--seed", 3, "--temperature", 0.8, "--top-k", 5])
    assert_page_draws(book, book_tab, 6, 600, 2 ** 64 - 1, 1.3, 0, ["--snapshot", 600, "--seed", 2 ** 64 - 1,
                                                                    "--temperature", 1.3])


TEXT_JS = """([index, seed, maxTokens]) => {
  const page = explainPage;
  const rng = new PyRandom(BigInt(seed));
  const ids = [...continueText(page.modelAt(index), rng, page.data.config.temperature, maxTokens, 0,
    page.encode("\\n"), page.data.bos)];
  return page.decode(ids);
}"""


@needs_browser
def test_javascript_continues_text_as_sample_does(browser, text_run):
    tab = OpenPage(browser, explain(text_run))
    data = tab.evaluate("explainPage.data.snapshots.map((s) => s.samples)")
    for index in range(3):  # steps 0, 100, 200
        continuation = tab.evaluate(TEXT_JS, [index, 42, 200])
        assert continuation == data[index][0]  # which the page's data holds from `sample --snapshot --seed`
    rc, out, _ = run_cli("sample", "--checkpoint", text_run, "--seed", 9, "--max-tokens", 40)
    assert out.startswith("\n" + tab.evaluate(TEXT_JS, [2, 9, 40]) + "\n")
    assert tab.errors() == []


@pytest.mark.slow
@needs_browser
def test_a_large_model_is_embedded_as_float32_and_agrees_to_1e5(browser, tmp_path_factory):
    """Above a million parameters: float32 weights, 3 snapshots by default, a page under 25 MB."""
    folder = train_run(tmp_path_factory.getbasetemp() / "large-run", "--data", NAMES, "--n-layer", "2",
                       "--n-embd", "208", "--n-head", "4", "--steps", "4", "--checkpoint-every", "1",
                       "--num-samples", "3")
    page = explain(folder)
    data = page_json(page)
    assert data["dtype"] == "float32" and data["run"]["num_params"] > 1_000_000
    assert [s["step"] for s in data["snapshots"]] == [0, 2, 4]
    assert page.stat().st_size <= 25_000_000
    assert "note" in data["graph"]  # too large for the book engine's graph here
    names = [name for name, _, _ in data["shapes"]]
    tensors = load_file(folder / "snapshots" / "step-0000002.safetensors")
    expected = np.concatenate([tensors[n].ravel() for n in names]).astype(np.float32)
    assert np.array_equal(decode_floats(data["snapshots"][1]["weights"], "float32"), expected)
    assert_one_line_error(run_cli("explain", folder, "-o", folder / "all.html", "--snapshots", 5),
                          "--snapshots 4 or fewer")

    tab = OpenPage(browser, page)
    checkpoint = load_checkpoint(folder)
    tokenizer = Tokenizer(checkpoint.vocab)
    examples = [tokenizer.example(d)[:17] for d in training_docs()[:3]]
    engine, _ = load_model(checkpoint, "numpy", step=4)
    got = tab.evaluate(FORWARD_JS, [2, [t[:-1] for t in examples]])
    for tokens, page_out in zip(examples, got):
        np.testing.assert_allclose(np.array(page_out["logits"]), engine.logits(tokens[:-1]), rtol=0, atol=1e-5)
    assert tab.errors() == []

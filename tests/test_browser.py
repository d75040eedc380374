"""The page `microgpt explain` writes, opened from disk in a headless Chromium and used as a reader would.

It must load with no console error and no request but its own file, show Python's numbers in its
DOM (the NumPy engine's probabilities and attention, the metrics' losses and statistics, the book
engine's graph), follow its step slider and text box, draw what `microgpt sample` prints, and
paint every panel. Skipped with a reason when Chromium or Playwright is missing, except under
CI=true, where these tests must run.
"""

from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
from conftest import NAMES, SPEC_SAMPLES, OpenPage, needs_browser, run_cli, samples_of
from test_explain import explain, numpy_prediction, page_json, training_docs, walk

from microgpt.checkpoint import load_checkpoint
from microgpt.config import Config
from microgpt.data import load_docs
from microgpt.evaluate import load_model
from microgpt.model import document_loss, init_params
from microgpt.sample import sample_probs
from microgpt.tokenizer import Tokenizer

pytestmark = needs_browser

PANELS = ("training", "samples", "prediction", "attention", "sampling", "step")


@pytest.fixture(scope="module")
def tab(browser, book) -> OpenPage:
    return OpenPage(browser, explain(book))


def table(tab: OpenPage) -> list[dict]:
    """The prediction table as the DOM shows it."""
    return tab.evaluate("""() => [...document.querySelectorAll('table.prediction tr')].slice(1).map((tr) => {
      const td = tr.querySelectorAll('td');
      return {input: td[1].textContent, target: td[2].textContent, p: Number(td[3].dataset.value),
              pText: td[3].textContent, lossText: td[4].textContent,
              top: [...td[5].querySelectorAll('.bar-label')].map((b) => b.textContent)};
    })""")


def set_range(tab: OpenPage, selector: str, value) -> None:
    """Move a slider as a hand would: set its value, then fire the input event the page listens to."""
    tab.evaluate("""([selector, value]) => {
      const input = document.querySelector(selector);
      input.value = String(value);
      input.dispatchEvent(new Event('input', {bubbles: true}));
    }""", [selector, value])


def chart_point(tab: OpenPage, step: int) -> tuple[float, float]:
    """Where the loss chart draws `step`, in page coordinates (kept just inside the plot at its ends)."""
    # In view and clear of the sticky header; then two frames, so uPlot has seen the scroll.
    tab.evaluate("""() => new Promise((done) => {
      explainPage.charts.training.over.scrollIntoView({block: 'center'});
      requestAnimationFrame(() => requestAnimationFrame(done));
    })""")
    return tab.evaluate("""(step) => {
      const u = explainPage.charts.training;
      const box = u.over.getBoundingClientRect();
      const x = Math.min(Math.max(u.valToPos(step, 'x'), 1), box.width - 3);  // the axes overlap the edges
      return [box.left + x, box.top + box.height / 2];
    }""", step)


def shown(tokenizer: Tokenizer, i: int) -> str:
    return "<BOS>" if i == tokenizer.BOS else tokenizer.chars[i]


def assert_table_is_the_engines(tab: OpenPage, book, text: str, step: int) -> None:
    tokenizer, tokens, _, p = numpy_prediction(book, text, step)
    rows = table(tab)
    assert len(rows) == len(tokens) - 1
    for pos, row in enumerate(rows):
        target = tokens[pos + 1]
        assert row["input"] == shown(tokenizer, tokens[pos]) and row["target"] == shown(tokenizer, target)
        assert abs(row["p"] - p[pos, target]) <= 1e-12
        assert row["pText"] == f"{p[pos, target]:.4f}"
        assert row["lossText"] == f"{-math.log(p[pos, target]):.4f}"
        top = sorted(range(27), key=lambda i: (-p[pos, i], i))[:5]
        assert row["top"] == [f"{shown(tokenizer, i)} {p[pos, i]:.4f}" for i in top]


# --- loading ----------------------------------------------------------------------------------


def test_page_loads_from_disk_with_no_request_and_no_error(tab):
    assert tab.requests == [tab.url]
    assert tab.errors() == []
    assert tab.evaluate("document.body.dataset.ready") == "1"
    summary = tab.evaluate("document.getElementById('run-summary').textContent")
    assert "4,192 parameters" in summary and "1,000 steps" in summary


# --- one prediction, inside ----------------------------------------------------------------------


def test_prediction_table_shows_the_numpy_engines_numbers(tab, book):
    assert tab.evaluate("document.getElementById('text-box').value") == training_docs()[0]
    assert_table_is_the_engines(tab, book, training_docs()[0], 1000)


def test_trace_prints_the_numbers_the_page_shows(tab, book):
    tab.page.fill("#text-box", "emma")
    rc, out, err = run_cli("trace", "--checkpoint", book, "--text", "emma")
    assert rc == 0, err
    printed = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    for row, cols in zip(table(tab), printed, strict=True):
        assert [row["input"], row["target"], row["pText"], row["lossText"]] == cols[1:5]
        assert row["top"] == [f"{a} {b}" for a, b in zip(cols[5::2], cols[6::2])]


def test_typing_redraws_the_prediction_and_the_attention(tab, book):
    tab.page.fill("#text-box", "")
    tab.page.type("#text-box", "mia")  # keystroke by keystroke
    assert_table_is_the_engines(tab, book, "mia", 1000)
    assert tab.evaluate("document.querySelectorAll('canvas.heatmap').length") == 4
    # A character outside the vocabulary: the reason in words, no table, no console error.
    tab.page.fill("#text-box", "Mia")
    note = tab.evaluate("document.getElementById('text-note').textContent")
    assert "'M'" in note and "vocabulary" in note
    assert table(tab) == []
    tab.page.fill("#text-box", "christophersonian")  # longer than block_size
    assert len(table(tab)) == 16
    assert "first 16 predictions" in tab.evaluate("document.getElementById('text-note').textContent")


def test_attention_rows_sum_to_one_and_are_the_engines(tab, book):
    tab.page.fill("#text-box", "emma")
    attention = tab.evaluate("explainPage.state.prediction.attention")
    checkpoint = load_checkpoint(book)
    tokens = Tokenizer(checkpoint.vocab).example("emma")
    engine, _ = load_model(checkpoint, "numpy")
    [layer] = engine.attention(tokens[:-1])
    assert len(attention) == 1 and len(attention[0]) == 4
    for h, rows in enumerate(attention[0]):
        assert len(rows) == 5
        for t, row in enumerate(rows):
            assert len(row) == t + 1 and abs(sum(row) - 1) <= 1e-12
            np.testing.assert_allclose(row, layer[h, t, :t + 1], rtol=0, atol=1e-12)


def test_step_slider_moves_prediction_attention_and_sampling(tab, book):
    tab.page.fill("#text-box", "emma")
    before = tab.evaluate("explainPage.state.distribution")
    set_range(tab, "#snapshot-slider", 3)
    assert tab.evaluate("document.getElementById('snapshot-step').textContent") == "300"
    assert_table_is_the_engines(tab, book, "emma", 300)
    engine, _ = load_model(load_checkpoint(book), "numpy", step=300)
    attention = tab.evaluate("explainPage.state.prediction.attention[0][2][4]")
    np.testing.assert_allclose(attention, engine.attention(Tokenizer(load_checkpoint(book).vocab).example("emma")[:-1])
                               [0][2, 4], rtol=0, atol=1e-12)
    after = tab.evaluate("explainPage.state.distribution")
    assert after != before
    np.testing.assert_allclose(after, sample_probs(engine.next_logits(26, 0, engine.new_cache()), 0.5), rtol=1e-13)
    assert tab.evaluate("document.querySelector('table.samples tr.current').dataset.step") == "300"
    set_range(tab, "#snapshot-slider", 0)
    assert_table_is_the_engines(tab, book, "emma", 0)  # step 0: the initial weights, near-uniform guesses
    set_range(tab, "#snapshot-slider", 10)


# --- sampling ---------------------------------------------------------------------------------


def drawn(tab: OpenPage) -> list[str]:
    return tab.evaluate("[...document.querySelectorAll('#draws li')].map((li) => li.dataset.text)")


def test_draw_button_prints_what_sample_prints(tab, book):
    set_range(tab, "#snapshot-slider", 10)
    tab.page.fill("#seed-box", "")
    tab.page.click("#draw-button")
    assert drawn(tab) == SPEC_SAMPLES  # the checkpoint's generator: the run's own 20 names
    assert "microgpt sample --checkpoint" in tab.evaluate("document.getElementById('draw-command').textContent")
    tab.page.click("#draw-button")  # again: the generator goes on, as one run of 40 samples
    rc, out, _ = run_cli("sample", "--checkpoint", book, "--num-samples", 40)
    assert drawn(tab) == samples_of(out)
    assert "--num-samples 40" in tab.evaluate("document.getElementById('draw-command').textContent")

    # Another step, a seed, a temperature and a top-k: what `sample --snapshot STEP --seed S` prints.
    set_range(tab, "#snapshot-slider", 5)
    set_range(tab, "#temperature", 0.8)
    set_range(tab, "#top-k", 6)
    tab.page.fill("#seed-box", "12345")
    tab.page.click("#draw-button")
    rc, out, _ = run_cli("sample", "--checkpoint", book, "--snapshot", 500, "--seed", 12345, "--temperature", 0.8,
                         "--top-k", 6)
    assert drawn(tab) == samples_of(out)
    command = tab.evaluate("document.getElementById('draw-command').textContent")
    assert "--snapshot 500 --seed 12345 --temperature 0.8 --top-k 6" in command
    kept = tab.evaluate("document.querySelectorAll('svg.distribution rect.kept').length")
    assert kept == 6
    # A prompt: every document starts with it, as `sample --prompt` gives them.
    tab.page.fill("#prompt-box", "ka")
    tab.page.click("#draw-button")
    rc, out, _ = run_cli("sample", "--checkpoint", book, "--snapshot", 500, "--seed", 12345, "--temperature", 0.8,
                         "--top-k", 6, "--prompt", "ka")
    assert drawn(tab) == samples_of(out) and all(s.startswith("ka") for s in drawn(tab))
    assert "--prompt ka" in tab.evaluate("document.getElementById('draw-command').textContent")
    tab.page.fill("#prompt-box", "")


def test_samples_panel_marks_copies_and_new_documents(tab, book):
    data = page_json(book / "explain.html")
    rows = tab.evaluate("""() => [...document.querySelectorAll('table.samples tr[data-step]')].map((tr) =>
      [...tr.querySelectorAll('.mark')].map((m) => [m.textContent, m.classList.contains('new') ? 'new' : 'copy']))""")
    known = set(load_docs(NAMES))
    assert len(rows) == 11
    for row, snap in zip(rows, data["snapshots"]):
        assert [text for text, _ in row] == [s or "(empty)" for s in snap["samples"]]
        assert [mark for _, mark in row] == ["copy" if s in known else "new" for s in snap["samples"]]
    final = tab.evaluate("[...document.querySelectorAll('#final-samples .mark')].map((m) => m.textContent)")
    assert final == SPEC_SAMPLES


# --- training and the microscope -------------------------------------------------------------


def test_hovering_the_loss_chart_shows_step_loss_and_document(tab, book):
    losses = [json.loads(line)["loss"] for line in (book / "metrics.jsonl").read_text().splitlines()[1:]]
    docs = training_docs()
    for step in (1, 37, 500, 1000):
        x, y = chart_point(tab, step)
        tab.page.mouse.move(x, y)
        hover = tab.evaluate("""() => ({
          step: Number(document.querySelector('#training-hover .hover-step').dataset.step),
          text: document.getElementById('training-hover').textContent,
          doc: document.querySelector('#training-hover .hover-doc').textContent})""")
        # About one step per pixel: the mouse lands on the step asked for or a neighbour; either must be right.
        assert abs(hover["step"] - step) <= 3
        shown_step = hover["step"]
        assert f"step {shown_step} loss {losses[shown_step - 1]:.4f}" in hover["text"]
        assert hover["doc"] == docs[shown_step - 1]
    tab.page.mouse.click(x, y)  # puts the step under the microscope
    assert tab.evaluate("explainPage.state.microStep") == shown_step


def test_running_mean_is_the_mean_of_each_window(tab, book):
    losses = [json.loads(line)["loss"] for line in (book / "metrics.jsonl").read_text().splitlines()[1:]]
    page = tab.evaluate("explainPage.runningMean(explainPage.data.training.loss, 100)")
    direct = [sum(losses[max(0, i - 99):i + 1]) / len(losses[max(0, i - 99):i + 1]) for i in range(len(losses))]
    np.testing.assert_allclose(page, direct, rtol=1e-12)
    gaps = tab.evaluate("explainPage.runningMean([1, 2, null, 4, 5, 6], 2)")
    assert gaps == [1, 1.5, None, None, 4.5, 5.5]  # a diverged step leaves a gap only where its windows reach


def test_microscope_shows_the_steps_graph_loss_and_gradients(tab, book):
    step = 37
    set_range(tab, "#micro-slider", step)
    doc = training_docs()[step - 1]
    records = [json.loads(line) for line in (book / "metrics.jsonl").read_text().splitlines()[1:]]
    record = records[step - 1]
    shown_doc = tab.evaluate("document.querySelector('#micro-summary .micro-doc').textContent")
    loss = tab.evaluate("Number(document.querySelector('#micro-summary .micro-loss').dataset.value)")
    assert shown_doc == doc and loss == record["loss"]
    # The graph: the book engine's, built here for this document, counted node by node.
    tokenizer = Tokenizer(load_checkpoint(book).vocab)
    params = init_params(Config(), 27, random.Random(0))
    nodes = walk(document_loss(tokenizer.example(doc), params, Config()))
    assert tab.evaluate("Number(document.querySelector('.graph-total').dataset.value)") == len(nodes)
    leaves = {id(v) for rows in params.values() for row in rows for v in row}
    reached = sum(id(n) in leaves for n in nodes)
    assert tab.evaluate("Number(document.querySelector('tr[data-op=parameters] td.num').dataset.value)") == reached
    # Every matrix's gradient and update norm, from the metrics file (float32 in the page).
    stats = tab.evaluate("""() => Object.fromEntries([...document.querySelectorAll('table.stats tr[data-matrix]')]
      .map((tr) => [tr.dataset.matrix, [Number(tr.dataset.grad), Number(tr.dataset.update)]]))""")
    assert set(stats) == set(record["stats"])
    for name, (grad, update) in stats.items():
        assert grad == pytest.approx(record["stats"][name][0], rel=1e-6)
        assert update == pytest.approx(record["stats"][name][2], rel=1e-6)


# --- every panel painted --------------------------------------------------------------------


def test_every_panel_is_painted(tab):
    from PIL import Image

    tab.evaluate("document.getElementById('top').style.position = 'static'")  # the sticky header off the panels
    for name in PANELS:
        png = tab.page.locator(f"#panel-{name}").screenshot()
        image = Image.open(io.BytesIO(png)).convert("RGB")
        colours = image.getcolors(1 << 20)
        assert image.width > 300 and image.height > 150, name
        assert len(colours) > 30, (name, len(colours))  # text, bars, heatmaps, curves: not a blank box
    tab.evaluate("document.getElementById('top').style.position = ''")


def test_page_stayed_offline_and_error_free(tab):
    """After every test above has typed, clicked, hovered and drawn."""
    assert set(tab.requests) == {tab.url}
    assert tab.errors() == []


# --- text mode --------------------------------------------------------------------------------


def test_text_mode_page_shows_windows_and_draws_continuations(browser, text_run):
    tab = OpenPage(browser, explain(text_run))
    assert tab.evaluate("document.getElementById('text-box').tagName") == "TEXTAREA"
    windows = page_json(text_run / "explain.html")["training"]["windows"]
    x, y = chart_point(tab, 100)
    tab.page.mouse.move(x, y)
    hover = tab.evaluate("document.querySelector('#training-hover .hover-doc').textContent")
    assert hover == windows[99].replace("\n", "↵\n")
    assert len(table(tab)) == 16  # a window of 17 characters: 16 predictions
    tab.page.fill("#seed-box", "5")
    tab.page.click("#draw-button")
    tab.page.wait_for_selector("#draws li")  # drawn a few characters at a time
    rc, out, _ = run_cli("sample", "--checkpoint", text_run, "--seed", 5, "--max-tokens", 200)
    assert out.startswith("\n" + drawn(tab)[0] + "\n")
    assert tab.errors() == [] and set(tab.requests) == {tab.url}

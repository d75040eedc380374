/*
 * The page of `microgpt explain`: a training run from the inside, panel by panel.
 *
 * The run's data comes from the JSON element #run-data (see microgpt/explain.py for what it
 * holds). Each panel is one `draw...` function that reads `state` and redraws its part of the
 * page; a control changes `state` and calls the draws that depend on it. The weights of a
 * snapshot are decoded the first time the step slider reaches it. The model and the generator
 * are model.js (the book's gpt()) and random.js (Python's Mersenne Twister); charts are uPlot.
 *
 * Exports (globals): explainPage, the state and the functions the tests and the benchmark call.
 */
"use strict";

window.explainPage = (function () {
  const data = JSON.parse(document.getElementById("run-data").textContent);
  const config = data.config;
  const textMode = config.data_format === "text";
  const vocab = data.vocab;
  const BOS = data.bos;
  const V = vocab.length + 1;
  const training = data.training;
  const snapshots = data.snapshots;
  const finalIndex = snapshots.length - 1;
  const $ = (id) => document.getElementById(id);

  const state = {
    snapshot: finalIndex, // index into data.snapshots: the weights the prediction, attention and sampling use
    text: data.default_text,
    prediction: null, // what the prediction and attention panels show: {tokens, rows, attention, meanLoss}
    microStep: training.steps[0],
    distribution: null, // the next-token probabilities the sampling panel shows
    draws: [], // documents drawn by the button so far, with the same settings
    drawRng: null,
    drawing: false,
  };

  // --- the data: weights and tokens -------------------------------------------------------

  /** Little-endian float64 (or float32) values from base64, read with a DataView. */
  function decodeFloats(b64, dtype) {
    const binary = atob(b64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const view = new DataView(bytes.buffer);
    if (dtype === "float32") {
      const out = new Float32Array(bytes.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    const out = new Float64Array(bytes.length / 8);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat64(8 * i, true);
    return out;
  }

  const models = new Map();

  /** The GPT holding the weights of snapshot `index`, decoded once. */
  function modelAt(index) {
    if (!models.has(index)) {
      const flat = decodeFloats(snapshots[index].weights, data.dtype);
      const stateDict = {};
      let offset = 0;
      for (const [name, rows, cols] of data.shapes) {
        stateDict[name] = { rows, cols, data: flat.subarray(offset, offset + rows * cols) };
        offset += rows * cols;
      }
      models.set(index, new GPT(config, stateDict));
    }
    return models.get(index);
  }

  const idOf = new Map(vocab.map((ch, i) => [ch, i]));

  /** Characters -> ids (code points, as Python iterates a str); unknown characters throw one message. */
  function encode(text) {
    const out = [];
    const unknown = [];
    for (const ch of text) {
      if (idOf.has(ch)) out.push(idOf.get(ch));
      else if (!unknown.includes(ch)) unknown.push(ch);
    }
    if (unknown.length) {
      const what =
        unknown.length === 1
          ? `character ${pyRepr(unknown[0])} is`
          : `characters ${pyRepr(unknown.sort().join(""))} are`;
      throw new Error(`${what} not in the vocabulary (${pyRepr(vocab.join(""))}): use only those characters`);
    }
    return out;
  }

  const decode = (ids) => ids.map((i) => vocab[i]).join("");

  /** A character as Python's repr shows an unprintable one: \n, \t, \xNN, \uNNNN. */
  function escaped(ch) {
    const named = { "\n": "\\n", "\t": "\\t", "\r": "\\r" };
    if (named[ch]) return named[ch];
    const code = ch.codePointAt(0);
    if (code < 0x100) return "\\x" + code.toString(16).padStart(2, "0");
    if (code < 0x10000) return "\\u" + code.toString(16).padStart(4, "0");
    return "\\U" + code.toString(16).padStart(8, "0");
  }

  const unprintable = /[\p{C}\p{Z}]/u;

  /** A token as the page and `microgpt trace` show it: <BOS>, <sp> for a space, unprintables escaped. */
  function shown(id) {
    if (id === BOS) return "<BOS>";
    const ch = vocab[id];
    if (ch === " ") return "<sp>";
    return unprintable.test(ch) ? escaped(ch) : ch;
  }

  function pyRepr(text) {
    return (
      "'" +
      [...text]
        .map((ch) => (ch === "'" || ch === "\\" ? "\\" + ch : unprintable.test(ch) && ch !== " " ? escaped(ch) : ch))
        .join("") +
      "'"
    );
  }

  /** 5.2: the example a text makes, cut to block_size predictions. */
  function exampleOf(text) {
    const ids = encode(text);
    const tokens = textMode ? ids : [BOS, ...ids, BOS];
    if (tokens.length < 2)
      throw new Error("in text mode each position predicts the next character: type at least 2 characters");
    return { tokens: tokens.slice(0, config.block_size + 1), truncated: tokens.length > config.block_size + 1 };
  }

  const trainSet = data.train_set === null ? null : new Set(data.train_set.split("\n"));
  const heldOutSet = data.held_out_set ? new Set(data.held_out_set.split("\n")) : new Set();

  /** Copy-or-new, as explain.py's sample_marks judges it (per line in text mode). */
  function markOf(text) {
    if (trainSet === null) return "unknown";
    if (textMode) return text.trim() === "" ? "blank" : trainSet.has(text) ? "copy" : "new";
    return trainSet.has(text) ? "copy" : heldOutSet.has(text) ? "held-out" : "new";
  }

  // --- small helpers for the DOM ------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  const fmt = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(digits));
  const sig = (x) =>
    x === null || !Number.isFinite(x)
      ? "-"
      : x === 0
        ? "0"
        : Math.abs(x) >= 0.01 && Math.abs(x) < 1000
          ? x.toPrecision(4)
          : x.toExponential(2);
  const plural = (n, word) => `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;
  const stepIndex = new Map(training.steps.map((s, i) => [s, i]));

  /** The document (lines) or window (text) step `step` trained on, and how to say it. */
  function documentOf(step) {
    const i = stepIndex.get(step);
    if (textMode) {
      const window = training.windows ? training.windows[i] : null;
      return window === null || window === undefined ? null : window;
    }
    const docs = training.train_docs;
    return docs.length ? (docs[((step - 1) * training.batch_size) % training.num_train_docs] ?? null) : null;
  }

  /** A text shown in a box: newlines kept as line breaks, marked with a visible ↵. */
  function textBox(text, cls = "textbox") {
    return el("pre", { class: cls, text: text.replace(/\n/g, "↵\n") });
  }

  // --- the header and the step slider -------------------------------------------------------

  function drawHeader() {
    const r = data.run;
    const c = config;
    const what = textMode
      ? `${plural(r.size, "character")} of ${r.data}`
      : `${plural(r.size, "document")} of ${r.data}`;
    $("run-summary").textContent =
      `${r.dir}: ${r.num_params.toLocaleString("en-US")} parameters (n_layer ${c.n_layer}, n_embd ` +
      `${c.n_embd}, n_head ${c.n_head}, block_size ${c.block_size}), ${plural(c.num_steps, "step")} on ${what}; ` +
      `checkpoint at step ${r.step}, trained by the ${r.engine} engine.`;
    const slider = $("snapshot-slider");
    slider.max = String(finalIndex);
    slider.value = String(state.snapshot);
    slider.addEventListener("input", () => setSnapshot(Number(slider.value)));
    $("footer").textContent =
      `Written by ${data.written_by} from ${r.dir} (run ${r.run_id || "?"}). ` +
      `Weights embedded as ${data.dtype}` +
      (data.dtype === "float32"
        ? " (the page's numbers then agree with the engines to about 1e-5, and its draws may differ from the CLI's)."
        : ".");
    drawStepBar();
  }

  function drawStepBar() {
    const step = snapshots[state.snapshot].step;
    $("snapshot-step").textContent = String(step);
    $("snapshot-slider").value = String(state.snapshot);
    const kept = snapshots.map((s) => s.step).join(", ");
    $("snapshot-note").textContent =
      `${snapshots.length} kept: ${kept}` + (step === 0 ? " (step 0: the initial random weights)" : "");
  }

  function setSnapshot(index) {
    state.snapshot = index;
    drawStepBar();
    drawPrediction();
    drawSamplesTable();
    resetDraws();
    drawDistribution();
    if (trainingChart) trainingChart.redraw(false, false);
  }

  // --- Training: the loss chart -------------------------------------------------------------

  let trainingChart = null;

  /** The running mean `microgpt plot` draws: each value and the window - 1 before it; a window with a gap is a gap. */
  function runningMean(values, window) {
    const out = [];
    let total = 0;
    let bad = 0;
    values.forEach((v, i) => {
      if (v === null) bad++;
      else total += v;
      if (i >= window) {
        const old = values[i - window];
        if (old === null) bad--;
        else total -= old;
      }
      out.push(bad ? null : total / Math.min(i + 1, window));
    });
    return out;
  }

  function chartWidth(id) {
    return Math.max(320, $(id).clientWidth || 800);
  }

  function drawTrainingChart() {
    const xs = training.steps;
    const running = runningMean(training.loss, training.running_window);
    const val = xs.map(() => null);
    for (const [step, loss] of training.val) if (stepIndex.has(step)) val[stepIndex.get(step)] = loss;
    const uniform = xs.map(() => training.uniform);
    const show4 = (u, v) => (v === null || v === undefined ? "-" : v.toFixed(4));
    const series = [
      { label: "step" },
      { label: "loss", stroke: "rgba(52, 101, 164, 0.35)", width: 1, value: show4 },
      { label: `running mean (${training.running_window} steps)`, stroke: "#204a87", width: 2, value: show4 },
      {
        label: "validation loss",
        stroke: "#c4572a",
        width: 1.5,
        spanGaps: true,
        value: show4,
        points: { show: true, size: 7, stroke: "#c4572a", fill: "#fff" },
      },
      { label: `uniform guess ln(${V})`, stroke: "#555", width: 1, dash: [6, 4], value: show4 },
      {
        label: "learning rate",
        stroke: "#4e9a06",
        width: 1.5,
        scale: "lr",
        value: (u, v) => (v === null ? "-" : v.toPrecision(4)),
      },
    ];
    const opts = {
      width: chartWidth("training-chart"),
      height: 320,
      scales: { x: { time: false }, lr: { range: (u, min, max) => [0, Math.max(max, 1e-12) * 1.05] } },
      series,
      axes: [
        { label: "step" },
        { label: "loss (nats per token)" },
        { scale: "lr", side: 1, label: "learning rate", grid: { show: false }, size: 70 },
      ],
      cursor: { drag: { x: false, y: false } },
      hooks: {
        setCursor: [(u) => drawTrainingHover(u.cursor.idx)],
        draw: [drawTrainingMarkers],
      },
    };
    trainingChart = new uPlot(opts, [xs, training.loss, running, val, uniform, training.lr], $("training-chart"));
    trainingChart.over.addEventListener("click", () => {
      const idx = trainingChart.cursor.idx;
      if (idx !== null && idx !== undefined) setMicroStep(xs[idx]);
    });
    drawTrainingHover(null);
  }

  /** The kept steps as faint lines, the chosen snapshot and the microscope's step stronger. */
  function drawTrainingMarkers(u) {
    const ctx = u.ctx;
    const line = (step, color, width) => {
      const x = Math.round(u.valToPos(step, "x", true));
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    };
    ctx.save();
    for (const s of snapshots) line(s.step, "rgba(0, 0, 0, 0.08)", 1);
    line(snapshots[state.snapshot].step, "rgba(117, 80, 123, 0.7)", 2);
    line(state.microStep, "rgba(245, 121, 0, 0.8)", 2);
    ctx.restore();
  }

  function drawTrainingHover(idx) {
    const box = $("training-hover");
    box.replaceChildren();
    if (idx === null || idx === undefined) {
      box.append(el("span", { class: "note", text: "Hover over the chart to see a step's document." }));
      return;
    }
    const step = training.steps[idx];
    const loss = training.loss[idx];
    box.append(
      el("span", { class: "hover-step", "data-step": String(step), text: `step ${step}` }),
      el("span", { "data-loss": String(loss), text: ` loss ${fmt(loss)}` }),
      el("span", { text: ` lr ${training.lr[idx] === null ? "-" : training.lr[idx].toPrecision(4)}` }),
    );
    const doc = documentOf(step);
    const more = training.batch_size > 1 ? ` (the first of its ${training.batch_size})` : "";
    if (doc === null) {
      box.append(el("span", { class: "note", text: " (its document is not embedded)" }));
    } else if (textMode) {
      box.append(el("span", { text: ` trained on the window${more}:` }), textBox(doc, "textbox hover-doc"));
    } else {
      box.append(el("span", { text: ` trained on${more} ` }), el("code", { class: "hover-doc", text: doc }));
    }
  }

  // --- Samples through training ------------------------------------------------------------

  function sampleChips(texts, marks) {
    const cell = el("div", { class: "chips" });
    texts.forEach((text, i) => {
      if (textMode) {
        const pre = el("pre", { class: "textbox sample-text" });
        for (const [line, mark] of marks[i]) pre.append(el("span", { class: `line ${mark}`, text: line + "\n" }));
        cell.append(pre);
      } else {
        cell.append(el("span", { class: `mark ${marks[i]}`, title: marks[i], text: text === "" ? "(empty)" : text }));
      }
    });
    return cell;
  }

  function tally(marks) {
    const flat = textMode
      ? marks
          .flat()
          .map(([, m]) => m)
          .filter((m) => m !== "blank")
      : marks;
    const count = (m) => flat.filter((x) => x === m).length;
    const parts = [`${count("new")} new`];
    if (count("held-out")) parts.push(`${count("held-out")} held-out`);
    parts.push(`${count("copy")} ${count("copy") === 1 ? "copy" : "copies"}`);
    return parts.join(", ") + (textMode ? ` (of ${flat.length} lines)` : "");
  }

  function drawSamplesTable() {
    const s = data.samples;
    $("samples-command").textContent =
      `Each row: ${s.command}` +
      (textMode ? "" : ` (temperature ${s.temperature}` + (s.top_k ? `, top-k ${s.top_k})` : ")"));
    const table = el("table", { class: "samples" });
    table.append(el("tr", {}, el("th", { text: "step" }), el("th", { text: "judged" }), el("th", { text: "samples" })));
    snapshots.forEach((snap, i) => {
      const row = el(
        "tr",
        { class: i === state.snapshot ? "current" : "", "data-step": String(snap.step) },
        el("td", { class: "num", text: String(snap.step) }),
        el("td", { text: tally(snap.marks) }),
        el("td", {}, sampleChips(snap.samples, snap.marks)),
      );
      row.addEventListener("click", () => setSnapshot(i));
      table.append(row);
    });
    if (s.final.length) {
      table.append(
        el(
          "tr",
          { class: "final" },
          el("td", { class: "num", text: String(data.run.step) }),
          el(
            "td",
            {},
            el("span", { text: tally(s.final_marks) }),
            el("br"),
            el("span", { class: "note", text: `the run's own samples: ${s.final_command}` }),
          ),
          el("td", { id: "final-samples" }, sampleChips(s.final, s.final_marks)),
        ),
      );
    }
    $("samples-table").replaceChildren(table);
  }

  // --- One prediction, inside ---------------------------------------------------------------

  /** Every position of `text` through the model of snapshot `index`: the rows of the table and the attention. */
  function predict(text, index) {
    const { tokens, truncated } = exampleOf(text);
    const inputs = tokens.slice(0, -1);
    const { logits, attention } = modelAt(index).forward(inputs);
    const rows = inputs.map((input, pos) => {
      const probs = softmax(logits[pos]);
      const target = tokens[pos + 1];
      const order = probs
        .map((p, i) => i)
        .sort((a, b) => probs[b] - probs[a] || a - b)
        .slice(0, 5);
      return {
        pos,
        input,
        target,
        p: probs[target],
        loss: -Math.log(probs[target]),
        top: order.map((i) => [i, probs[i]]),
      };
    });
    const meanLoss = rows.reduce((sum, r) => sum + r.loss, 0) / rows.length;
    return { tokens, truncated, logits, rows, attention, meanLoss };
  }

  function buildTextBox() {
    const box = textMode
      ? el("textarea", { id: "text-box", rows: "4", spellcheck: "false" })
      : el("input", { id: "text-box", type: "text", spellcheck: "false", autocomplete: "off" });
    box.value = state.text;
    box.addEventListener("input", () => {
      state.text = box.value;
      drawPrediction();
    });
    $("text-field").append(box);
  }

  function bars(top, target) {
    const cell = el("div", { class: "bars" });
    for (const [id, p] of top) {
      const bar = el("div", { class: "bar" + (id === target ? " target" : "") });
      bar.append(
        el("span", { class: "bar-fill", style: `width:${(100 * p).toFixed(1)}%` }),
        el("span", { class: "bar-label", text: `${shown(id)} ${p.toFixed(4)}` }),
      );
      cell.append(bar);
    }
    return cell;
  }

  function drawPrediction() {
    const note = $("text-note");
    try {
      state.prediction = predict(state.text, state.snapshot);
    } catch (e) {
      state.prediction = null;
      note.textContent = e.message;
      note.classList.add("error");
      $("prediction-table").replaceChildren();
      $("attention-grid").replaceChildren();
      return;
    }
    note.classList.remove("error");
    const pr = state.prediction;
    const step = snapshots[state.snapshot].step;
    note.textContent =
      `${plural(pr.rows.length, "position")} at step ${step}` +
      (pr.truncated
        ? `; the text is longer than block_size, so the model sees its first ${config.block_size} predictions.`
        : ".");
    const table = el("table", { class: "prediction" });
    table.append(
      el(
        "tr",
        {},
        ...["pos", "input", "target", "p(target)", "loss", "likeliest next tokens"].map((h) => el("th", { text: h })),
      ),
    );
    for (const r of pr.rows) {
      table.append(
        el(
          "tr",
          {},
          el("td", { class: "num", text: String(r.pos) }),
          el("td", { class: "token", text: shown(r.input) }),
          el("td", { class: "token", text: shown(r.target) }),
          el("td", { class: "num p-target", "data-value": String(r.p), text: r.p.toFixed(4) }),
          el("td", { class: "num loss", "data-value": String(r.loss), text: r.loss.toFixed(4) }),
          el("td", {}, bars(r.top, r.target)),
        ),
      );
    }
    const summary = el("p", {
      class: "mean-loss",
      "data-value": String(pr.meanLoss),
      text:
        `mean loss ${pr.meanLoss.toFixed(4)} over ${plural(pr.rows.length, "position")} ` +
        `(a uniform guess: ln(${V}) = ${Math.log(V).toFixed(4)})`,
    });
    $("prediction-table").replaceChildren(table, summary);
    drawAttention();
  }

  // --- Attention heatmaps -------------------------------------------------------------------

  // Viridis, sampled: dark blue for 0, yellow for 1.
  const VIRIDIS = [
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
  ];

  function colour(w) {
    const x = Math.min(1, Math.max(0, w)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function heatmap(weights, labels, li, h) {
    const T = labels.length;
    const cell = Math.max(3, Math.min(22, Math.floor(360 / T)));
    const margin = T <= 40 ? 40 : 4; // room for the token labels while they fit
    const size = margin + T * cell;
    const ratio = window.devicePixelRatio || 1;
    const canvas = el("canvas", {
      class: "heatmap",
      width: String(size * ratio),
      height: String(size * ratio),
      style: `width:${size}px;height:${size}px`,
      "data-layer": String(li),
      "data-head": String(h),
    });
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.font = `${Math.min(12, cell - 2)}px ui-monospace, monospace`;
    ctx.fillStyle = "#333";
    if (margin > 4) {
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      labels.forEach((label, i) => ctx.fillText(label, margin - 4, margin + (i + 0.5) * cell));
      ctx.save();
      ctx.textAlign = "left";
      labels.forEach((label, j) => {
        ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
        ctx.translate(margin + (j + 0.5) * cell, margin - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(label, 0, 0);
      });
      ctx.restore();
    }
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        ctx.fillStyle = j <= i ? colour(weights[i][j]) : "#eee";
        ctx.fillRect(margin + j * cell, margin + i * cell, cell - (cell > 6 ? 1 : 0), cell - (cell > 6 ? 1 : 0));
      }
    }
    canvas.addEventListener("mousemove", (event) => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((event.clientX - box.left - margin) / cell);
      const i = Math.floor((event.clientY - box.top - margin) / cell);
      const out = $("attention-hover");
      if (i < 0 || j < 0 || i >= T || j >= T) return;
      out.textContent =
        j <= i
          ? `layer ${li} head ${h}: position ${i} (${labels[i]}) looks at position ${j} (${labels[j]}) with weight ${weights[i][j].toFixed(4)}`
          : `layer ${li} head ${h}: position ${i} cannot look at position ${j}, which comes later`;
    });
    return canvas;
  }

  function drawAttention() {
    const pr = state.prediction;
    const grid = $("attention-grid");
    grid.replaceChildren();
    if (!pr) return;
    const labels = pr.tokens.slice(0, -1).map(shown);
    pr.attention.forEach((heads, li) => {
      const row = el("div", { class: "attention-row" });
      heads.forEach((weights, h) => {
        row.append(
          el("figure", {}, heatmap(weights, labels, li, h), el("figcaption", { text: `layer ${li}, head ${h}` })),
        );
      });
      grid.append(row);
    });
  }

  // --- Sampling: temperature, top-k, and drawing -------------------------------------------

  function buildSamplingControls() {
    const prompt = textMode ? el("textarea", { id: "prompt-box", rows: "2", spellcheck: "false" }) : null;
    if (prompt) $("prompt-box").replaceWith(prompt);
    $("prompt-box").value = data.default_prompt;
    const temperature = $("temperature");
    temperature.min = "0.01";
    temperature.step = "0.01";
    temperature.value = String(config.temperature);
    const topK = $("top-k");
    topK.max = String(V);
    topK.value = String(config.top_k);
    const changed = () => {
      resetDraws();
      drawDistribution();
    };
    for (const id of ["prompt-box", "temperature", "top-k", "seed-box"]) $(id).addEventListener("input", changed);
    $("draw-button").addEventListener("click", () => drawMore());
  }

  function samplingSettings() {
    const temperature = parseFloat($("temperature").value);
    const topK = parseInt($("top-k").value, 10);
    const seedText = $("seed-box").value.trim();
    const final = state.snapshot === finalIndex && snapshots[finalIndex].step === data.run.step;
    $("seed-box").placeholder = final ? "the checkpoint's" : String(data.samples.seed);
    let seed = null;
    if (seedText !== "") {
      if (!/^\d+$/.test(seedText))
        throw new Error(`seed ${seedText}: type a whole number of 0 or more, or leave it empty`);
      seed = BigInt(seedText);
    } else if (!final) {
      seed = BigInt(data.samples.seed);
    }
    $("temperature-value").textContent = String(temperature);
    $("top-k-value").textContent = topK === 0 ? "all" : String(topK);
    const prompt = $("prompt-box").value;
    const promptIds = encode(prompt);
    if (textMode && promptIds.length === 0) throw new Error("the prompt is empty: give some text to continue");
    if (!textMode && promptIds.length >= config.block_size) {
      throw new Error(
        `the prompt is ${promptIds.length} characters; the model sees at most ${config.block_size}: use a shorter prompt`,
      );
    }
    return { temperature, topK, seed, prompt, promptIds, final };
  }

  /** samplingSettings() as { settings, error }: the message of what a box holds that it cannot use, or null. */
  function readSettings() {
    try {
      return { settings: samplingSettings(), error: null };
    } catch (e) {
      return { settings: null, error: e.message };
    }
  }

  /** The command that prints the same documents (the `upTo` first ones, in one run). */
  function commandFor(settings, upTo) {
    const words = ["microgpt", "sample", "--checkpoint", data.run.dir];
    if (settings.seed !== null) {
      // else: the checkpoint's generator, which belongs to its latest step
      if (!settings.final) words.push("--snapshot", String(snapshots[state.snapshot].step));
      words.push("--seed", String(settings.seed));
    }
    if (settings.temperature !== config.temperature) words.push("--temperature", String(settings.temperature));
    if (settings.topK !== config.top_k) words.push("--top-k", String(settings.topK));
    if (settings.prompt !== data.default_prompt) words.push("--prompt", settings.prompt);
    if (textMode) words.push("--max-tokens", String(data.samples.max_tokens));
    const printed = textMode ? 1 : config.num_samples; // what `sample` prints without --num-samples
    if (upTo !== printed) words.push("--num-samples", String(upTo));
    return words.map(shellQuote).join(" ");
  }

  function shellQuote(word) {
    return /^[\w@%+=:,./-]+$/.test(word) ? word : "'" + word.replace(/'/g, "'\"'\"'") + "'";
  }

  function drawDistribution() {
    const note = $("sampling-note");
    const { settings, error } = readSettings();
    if (error !== null) {
      note.textContent = error;
      note.classList.add("error");
      $("distribution").replaceChildren();
      $("draw-button").disabled = true;
      return;
    }
    note.classList.remove("error");
    $("draw-button").disabled = state.drawing;
    const model = modelAt(state.snapshot);
    const context = textMode ? settings.promptIds.slice(-config.block_size) : [BOS, ...settings.promptIds];
    const logits = model.windowLogits(context);
    if (textMode) logits[BOS] = -Infinity;
    const probs = sampleProbs(logits, settings.temperature, settings.topK);
    state.distribution = probs;
    const step = snapshots[state.snapshot].step;
    const after = settings.prompt === "" ? "at the start of a document" : `after ${pyRepr(settings.prompt)}`;
    const generator =
      settings.seed === null ? "the checkpoint's generator (as the run left it)" : `random.Random(${settings.seed})`;
    note.textContent = `The next token ${after}, at step ${step}. The draw button takes ${
      textMode ? `${data.samples.max_tokens} characters` : `${data.samples.count} documents`
    } from ${generator}; again, the next ones.`;
    $("distribution").replaceChildren(distributionChart(probs));
  }

  function distributionChart(probs) {
    let ids = probs.map((p, i) => i);
    if (V > 64) ids = ids.sort((a, b) => probs[b] - probs[a] || a - b).slice(0, 40); // the 40 likeliest
    const width = Math.max(320, Math.min(900, ids.length * 26));
    const height = 170;
    const barWidth = width / ids.length;
    const top = Math.max(...ids.map((i) => probs[i]), 1e-12);
    const svgNS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("class", "distribution");
    ids.forEach((id, k) => {
      const p = probs[id];
      const h = (height - 40) * (p / top);
      const rect = document.createElementNS(svgNS, "rect");
      rect.setAttribute("x", String(k * barWidth + 2));
      rect.setAttribute("y", String(height - 22 - h));
      rect.setAttribute("width", String(Math.max(1, barWidth - 4)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("class", p === 0 ? "cut" : "kept");
      rect.setAttribute("data-token", shown(id));
      rect.setAttribute("data-p", String(p));
      const title = document.createElementNS(svgNS, "title");
      const why = textMode && id === BOS ? " (never drawn in text mode)" : " (cut by top-k)";
      title.textContent = `${shown(id)}: ${p.toFixed(4)}` + (p === 0 ? why : "");
      rect.append(title);
      const label = document.createElementNS(svgNS, "text");
      label.setAttribute("x", String(k * barWidth + barWidth / 2));
      label.setAttribute("y", String(height - 6));
      label.setAttribute("text-anchor", "middle");
      label.textContent = shown(id);
      if (label.textContent.length > 3) {
        // <BOS>, <sp>: squeezed to the bar's width
        label.setAttribute("textLength", String(barWidth - 2));
        label.setAttribute("lengthAdjust", "spacingAndGlyphs");
      }
      svg.append(rect, label);
    });
    return svg;
  }

  function resetDraws() {
    state.draws = [];
    state.drawRng = null;
    state.drawing = false;
    $("draws").replaceChildren();
    $("draw-command").textContent = "";
  }

  /** The next batch of documents (or one continuation) from the generator, continued across presses. */
  function drawMore() {
    const { settings } = readSettings();
    if (settings === null) return; // drawDistribution shows why
    if (state.drawRng === null) {
      state.drawRng = new PyRandom();
      if (settings.seed === null) state.drawRng.setState(data.rng_state);
      else state.drawRng.seed(settings.seed);
    }
    const model = modelAt(state.snapshot);
    const rng = state.drawRng;
    const start = state.draws.length;
    if (!textMode) {
      for (let i = 0; i < data.samples.count; i++) {
        const ids = sampleDocument(
          model,
          rng,
          settings.temperature,
          settings.topK,
          settings.promptIds,
          BOS,
        );
        state.draws.push(decode(ids));
      }
      showDraws(settings, start);
      return;
    }
    // Text: one continuation, drawn a few characters at a time so the page stays responsive.
    const tokens = continueText(
      model,
      rng,
      settings.temperature,
      data.samples.max_tokens,
      settings.topK,
      settings.promptIds,
      BOS,
    );
    const ids = [];
    state.drawing = true;
    $("draw-button").disabled = true;
    const generation = rng;
    const chunk = () => {
      if (state.drawRng !== generation) return; // settings changed: this draw is abandoned
      const until = performance.now() + 30;
      let next = tokens.next();
      while (!next.done) {
        ids.push(next.value);
        if (performance.now() > until) break;
        next = tokens.next();
      }
      $("draw-command").textContent = `drawing: ${ids.length} of ${data.samples.max_tokens} characters`;
      if (!next.done) {
        setTimeout(chunk, 0);
        return;
      }
      state.draws.push(decode(ids));
      state.drawing = false;
      $("draw-button").disabled = false;
      showDraws(settings, start);
    };
    chunk();
  }

  function showDraws(settings, start) {
    const list = $("draws");
    list.start = 1;
    for (let i = start; i < state.draws.length; i++) {
      const text = state.draws[i];
      if (textMode) {
        const pre = el("pre", { class: "textbox sample-text" });
        const shownText = settings.prompt + text;
        for (const line of text.split("\n"))
          pre.append(el("span", { class: `line ${markOf(line)}`, text: line + "\n" }));
        pre.setAttribute("data-text", shownText);
        list.append(el("li", { class: "draw", "data-text": text }, pre));
      } else {
        list.append(
          el(
            "li",
            { class: "draw", "data-text": text },
            el("span", { class: `mark ${markOf(text)}`, text: text === "" ? "(empty)" : text }),
          ),
        );
      }
    }
    const n = state.draws.length;
    const first = n === (textMode ? 1 : data.samples.count);
    $("draw-command").textContent = first
      ? `The same: ${commandFor(settings, n)}`
      : `Documents ${start + 1}-${n} of ${commandFor(settings, n)}`;
  }

  // --- One step under the microscope --------------------------------------------------------

  const GRAPH_OPS = {
    "+": "sums: dot products, softmax denominators, residual connections",
    "*": "products: weights times inputs, q·k, attention times v, rmsnorm's rescale",
    "**-1": "the divisions, a / b = a · b^-1 (softmax, the 1/n of the mean)",
    "**-0.5": "rmsnorm's (mean(x²) + 1e-5)^-1/2",
    exp: "softmax's exponentials: attention weights, next-token probabilities",
    log: "cross-entropy, one per position",
    relu: "the MLP's hidden units",
    constants: "leaves: numbers (the 0 each sum starts from, 1e-5, -max, ...)",
  };

  let stats = null; // {steps, values: Float32Array (steps, matrices, 4)}
  const matrixNames = data.shapes.map(([name]) => name);

  function buildMicroscope() {
    const last = training.steps[training.steps.length - 1];
    for (const id of ["micro-slider", "micro-step"]) {
      const input = $(id);
      input.min = String(training.steps[0]);
      input.max = String(last);
      input.value = String(state.microStep);
      input.addEventListener("input", () => {
        const step = parseInt(input.value, 10);
        if (stepIndex.has(step)) setMicroStep(step);
      });
    }
    if (data.stats) stats = { steps: data.stats.steps, values: decodeFloats(data.stats.values, "float32") };
  }

  function setMicroStep(step) {
    state.microStep = step;
    $("micro-slider").value = String(step);
    $("micro-step").value = String(step);
    drawMicroscope();
    if (trainingChart) trainingChart.redraw(false, false);
    if (gradChart) gradChart.redraw(false, false);
  }

  /** The logged statistics nearest to `step`: their index in stats.steps. */
  function nearestStats(step) {
    let lo = 0;
    let hi = stats.steps.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (stats.steps[mid] < step) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(stats.steps[lo - 1] - step) <= Math.abs(stats.steps[lo] - step)) lo--;
    return lo;
  }

  function drawMicroscope() {
    const step = state.microStep;
    const i = stepIndex.get(step);
    const doc = documentOf(step);
    const loss = training.loss[i];
    const lr = training.lr[i];
    const summary = $("micro-summary");
    summary.replaceChildren();
    let n = null;
    let inputs = null;
    if (doc !== null) {
      try {
        const tokens = textMode ? encode(doc) : [BOS, ...encode(doc), BOS];
        n = Math.min(config.block_size, tokens.length - 1);
        inputs = tokens.slice(0, n);
      } catch (e) {
        n = null;
      }
    }
    const more = training.batch_size > 1 ? ` (the first of its ${training.batch_size})` : "";
    summary.append(
      el(
        "p",
        {},
        el("strong", { text: `step ${step}` }),
        ` read${more} `,
        doc === null
          ? el("span", { class: "note", text: "a document not embedded" })
          : textMode
            ? textBox(doc)
            : el("code", { class: "micro-doc", text: doc }),
        n === null ? "" : ` (${plural(n, "position")})`,
        "; loss ",
        el("strong", { class: "micro-loss", "data-value": String(loss), text: fmt(loss) }),
        `, learning rate lr_t = ${lr === null ? "-" : lr.toPrecision(4)}.`,
      ),
    );
    drawGraphCounts(n, inputs);
    drawStats(step, lr);
  }

  function drawGraphCounts(n, inputs) {
    const box = $("micro-graph");
    box.replaceChildren(el("h3", { text: "the graph this step built (5.3)" }));
    const g = data.graph;
    if (g.note || n === null) {
      box.append(el("p", { class: "note", text: g.note || "(no document for this step)" }));
      return;
    }
    const counts = g.by_length[n - 1];
    const C = config.n_embd;
    const distinct = new Set(inputs).size;
    const params = distinct * C + n * C + g.other_params;
    const table = el("table", { class: "graph" });
    table.append(el("tr", {}, el("th", { text: "node" }), el("th", { text: "count" }), el("th", { text: "what" })));
    const rows = g.ops.map((op, k) => [op, counts[k], GRAPH_OPS[op] || ""]);
    rows.push([
      "parameters",
      params,
      `leaves: the weights it reached (wte rows of ${distinct} distinct tokens, wpe rows of ${n} positions, every other matrix whole)`,
    ]);
    let total = 0;
    for (const [op, count, what] of rows) {
      total += count;
      table.append(
        el(
          "tr",
          { "data-op": op },
          el("td", { class: "token", text: op }),
          el("td", { class: "num", "data-value": String(count), text: count.toLocaleString("en-US") }),
          el("td", { text: what }),
        ),
      );
    }
    table.append(
      el(
        "tr",
        { class: "total" },
        el("td", { text: "total" }),
        el("td", { class: "num graph-total", "data-value": String(total), text: total.toLocaleString("en-US") }),
        el("td", { text: "Values; backward() (5.5) visits every one, in reverse" }),
      ),
    );
    box.append(table);
  }

  /** A horizontal bar filled to value / max in the colour of `kind`, `label` beside it, `marks` on it. */
  function hbar(kind, value, max, label, ...marks) {
    return el(
      "div",
      { class: "hbar" },
      el("span", { class: `hbar-fill ${kind}`, style: `width:${((100 * value) / max).toFixed(1)}%` }),
      ...marks,
      el("span", { class: "hbar-label", text: label }),
    );
  }

  function drawStats(step, lr) {
    const box = $("micro-stats");
    box.replaceChildren(el("h3", { text: "each matrix after backward and Adam (5.5-5.7)" }));
    if (!stats) {
      box.append(
        el("p", {
          class: "note",
          text: "This run logged no matrix statistics (train with --metrics and the default --stats-every).",
        }),
      );
      return;
    }
    const k = nearestStats(step);
    const at = stats.steps[k];
    const lrAt = training.lr[stepIndex.get(at)] ?? lr;
    if (at !== step)
      box.append(el("p", { class: "note", text: `statistics were logged at step ${at}, the nearest to ${step}` }));
    const M = matrixNames.length;
    const rows = matrixNames.map((name, m) => {
      const base = (k * M + m) * 4;
      const [, rows, cols] = data.shapes[m];
      const [g, w, u, ratio] = Array.from(stats.values.subarray(base, base + 4));
      return { name, shape: `${rows}×${cols}`, g, w, u, ratio, rms: u / Math.sqrt(rows * cols) };
    });
    const gMax = Math.max(...rows.map((r) => r.g).filter(Number.isFinite), 1e-30);
    const rmsMax = Math.max(lrAt || 0, ...rows.map((r) => r.rms).filter(Number.isFinite), 1e-30);
    const table = el("table", { class: "stats" });
    table.append(
      el(
        "tr",
        {},
        ...[
          "matrix",
          "shape",
          "gradient norm",
          "weight norm",
          "update per weight (RMS) vs lr_t",
          "update / weight",
        ].map((h) => el("th", { text: h })),
      ),
    );
    for (const r of rows) {
      const gBar = hbar("grad", r.g, gMax, sig(r.g));
      const uBar = hbar(
        "update",
        r.rms,
        rmsMax,
        `${sig(r.rms)} (${lrAt ? (r.rms / lrAt).toFixed(2) : "-"} lr_t)`,
        el("span", {
          class: "hbar-mark",
          style: `left:${((100 * (lrAt || 0)) / rmsMax).toFixed(1)}%`,
          title: `lr_t = ${lrAt}`,
        }),
      );
      table.append(
        el(
          "tr",
          { "data-matrix": r.name, "data-grad": String(r.g), "data-update": String(r.u) },
          el("td", { class: "token", text: r.name }),
          el("td", { text: r.shape }),
          el("td", {}, gBar),
          el("td", { class: "num", text: sig(r.w) }),
          el("td", {}, uBar),
          el("td", { class: "num", text: sig(r.ratio) }),
        ),
      );
    }
    box.append(
      table,
      el("p", {
        class: "note",
        text:
          "Gradients differ by orders of magnitude from matrix to matrix; " +
          "Adam divides each by its own running size, so every matrix moves by about lr_t per weight (the mark). wte and " +
          "wpe move less: only the rows of the tokens and positions a document reads get a gradient, and the others " +
          "drift only on Adam's momentum.",
      }),
    );
  }

  let gradChart = null;

  function drawGradChart() {
    if (!stats) return;
    const M = matrixNames.length;
    const palette = [
      "#204a87",
      "#c4572a",
      "#4e9a06",
      "#75507b",
      "#c17d11",
      "#ce5c00",
      "#3465a4",
      "#cc0000",
      "#555753",
      "#8f5902",
    ];
    const columns = matrixNames.map((_, m) =>
      stats.steps.map((s, k) => {
        const g = stats.values[(k * M + m) * 4];
        return g > 0 && Number.isFinite(g) ? g : null;
      }),
    );
    const series = [
      { label: "step" },
      ...matrixNames.map((name, m) => ({
        label: name,
        stroke: palette[m % palette.length],
        width: 1,
        value: (u, v) => sig(v),
      })),
    ];
    gradChart = new uPlot(
      {
        width: chartWidth("grad-chart"),
        height: 260,
        series,
        scales: { x: { time: false }, y: { distr: 3 } },
        axes: [{ label: "step" }, { label: "gradient norm (log scale)", size: 70 }],
        cursor: { drag: { x: false, y: false } },
        hooks: {
          draw: [
            (u) => {
              const x = Math.round(u.valToPos(state.microStep, "x", true));
              u.ctx.save();
              u.ctx.strokeStyle = "rgba(245, 121, 0, 0.8)";
              u.ctx.lineWidth = 2;
              u.ctx.beginPath();
              u.ctx.moveTo(x, u.bbox.top);
              u.ctx.lineTo(x, u.bbox.top + u.bbox.height);
              u.ctx.stroke();
              u.ctx.restore();
            },
          ],
        },
      },
      [stats.steps, ...columns],
      $("grad-chart"),
    );
    gradChart.over.addEventListener("click", () => {
      const idx = gradChart.cursor.idx;
      if (idx !== null && idx !== undefined && stepIndex.has(stats.steps[idx])) setMicroStep(stats.steps[idx]);
    });
  }

  // --- start -------------------------------------------------------------------------------

  function start() {
    drawHeader();
    drawTrainingChart();
    drawSamplesTable();
    buildTextBox();
    drawPrediction();
    buildSamplingControls();
    drawDistribution();
    buildMicroscope();
    drawMicroscope();
    drawGradChart();
    window.addEventListener("resize", () => {
      if (trainingChart) trainingChart.setSize({ width: chartWidth("training-chart"), height: 320 });
      if (gradChart) gradChart.setSize({ width: chartWidth("grad-chart"), height: 260 });
    });
    page.readyAt = performance.now();
    document.body.dataset.ready = "1";
  }

  const page = {
    data,
    state,
    modelAt,
    encode,
    decode,
    shown,
    exampleOf,
    predict,
    runningMean,
    markOf,
    setSnapshot,
    setMicroStep,
    drawMore,
    resetDraws,
    readyAt: null,
    get charts() {
      return { training: trainingChart, grad: gradChart };
    },
  };
  start();
  return page;
})();

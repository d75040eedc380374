"""Fuzzing what the tool reads: a valid checkpoint.json, state file and metrics file, mutated at random.

Every command that reads a file (`sample`, `eval` and `train --resume` a checkpoint; `plot`, `compare`
and `train --resume` a metrics file) either works as if the file were valid (some mutations still are)
or exits 2 with one line `microgpt: error: ...`; never a traceback, never a hang. The mutations are not
the validator's own list: random JSON values (None, booleans, integers and floats of any size, nan and
infinities, text, nested lists and objects) replace, join or leave a random place of the document, and
raw bytes are cut, flipped or inserted. Whatever a resume then writes, the tool must read back.

Runs are in this process, on a model of under a thousand numbers, so an example takes milliseconds;
each command gets a time budget (a hang is a failure, a long training the file asked for is not).
The examples are the same on every run (derandomized); set MICROGPT_FUZZ_EXAMPLES=N to explore N
random ones instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import tempfile
import traceback
from pathlib import Path

import pytest
from conftest import SMALL_FLAGS, TINY_DOCS, run_cli_interrupted, write_docs
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from microgpt.checkpoint import CHECKPOINT, load_checkpoint
from microgpt.cli import main
from microgpt.config import Config
from microgpt.metrics import RUN_HEADER, STEP, read_metrics

EXPLORE = int(os.environ.get("MICROGPT_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=EXPLORE or examples, deadline=None, derandomize=not EXPLORE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- random JSON, and where to put it -----------------------------------------------------------------------

SPECIAL_INTS = [0, -1, 1, 2, 3, 8, 624, 625, 10 ** 6, 10 ** 12, 10 ** 100, -(2 ** 63),
                *(2 ** k + d for k in (31, 32, 53, 63, 64) for d in (-1, 0, 1))]
SPECIAL_FLOATS = [0.0, -0.0, 0.5, 1.0, 0.009, 1e-8, 5e-324, 1e300, 1e308, -1e308, 1.7976931348623157e308, math.nan,
                  math.inf, -math.inf]
# The edges of what a number field can hold, for a whole column at once.
EXTREMES = [0, -1, 2 ** 63, 2 ** 64, 10 ** 100, 5e-324, 1e308, -1e308, math.inf, math.nan]
SPECIAL_TEXT = ["", ".", "..", "../x", "/dev/zero", "/tmp", "a", "ab", "ba", "\ud800", "\x00", "\n", "1", "NaN",
                "numpy", "scalar", "cuda", "auto", "sgd", "text", "cosine", "metrics.jsonl", "checkpoint.json",
                "state-0000012.safetensors", "x" * 300, "F64", "F32", "step", "run"]


def _known_keys() -> list[str]:
    """The field names of every format read: a mutation also adds or moves keys the schemas know."""
    names = set(Config().to_dict())
    names |= {"format", "version", "step", "engine", "engine_options", "run_options", "config", "vocab",
              "data_fingerprint", "data", "rng_state", "rngs", "engine_state", "state_file", "state_sha256",
              "saved_at", "elapsed", "run_id", "metrics", "metrics_hint", "stages", "from", "to", "windows",
              "samples", "dropout_rng", "device", "dtype", "compile", "threads", "checkpoint_every",
              "sample_every", "keep_snapshots", "stats_every"}
    names |= {"type", "loss", "lr", "time", "val_loss", "stats", "window", "vocab_size", "num_params", "num_docs",
              "started", "resumed_from", "data_format", "shape", "data_offsets", "__metadata__"}
    return sorted(names)


KNOWN_KEYS = _known_keys()

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(SPECIAL_INTS), st.floats(),
    st.sampled_from(SPECIAL_FLOATS), st.text(max_size=12), st.sampled_from(SPECIAL_TEXT))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(KNOWN_KEYS), inner, max_size=4), max_leaves=8)


def _places(node, path=()) -> list[tuple]:
    """Every place in a document; of a long list (a generator's 625 words) only its first and last items."""
    places = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            places += _places(value, (*path, key))
    elif isinstance(node, list):
        for i in sorted({*range(min(len(node), 3)), len(node) - 1} - {-1}):
            places += _places(node[i], (*path, i))
    return places


def random_path(data, doc) -> list:
    """A random place in `doc` (at least one key deep): either each level's keys equally likely, stopping at any
    depth, or every place of the document equally likely (so the config's fields are hit as often as the top's)."""
    if data.draw(st.booleans(), label="any place"):
        return list(data.draw(st.sampled_from(_places(doc)), label="place"))
    path, node = [], doc
    while isinstance(node, (dict, list)) and node:
        if path and data.draw(st.booleans(), label="stop here"):
            break
        key = data.draw(st.sampled_from(list(node)) if isinstance(node, dict)
                        else st.integers(0, len(node) - 1), label="key")
        path.append(key)
        node = node[key]
    return path


NUMBERS = (st.sampled_from(SPECIAL_INTS + SPECIAL_FLOATS) | st.integers() | st.floats()
           | st.floats(min_value=1e100) | st.floats(max_value=-1e100) | st.integers(min_value=2 ** 62))
TEXTS = st.sampled_from(SPECIAL_TEXT) | st.text(max_size=12)


def _holds(node, kinds) -> bool:
    if isinstance(node, dict):
        return any(_holds(v, kinds) for v in node.values())
    if isinstance(node, list):
        return any(_holds(v, kinds) for v in node)
    return isinstance(node, kinds) and not isinstance(node, bool)


def path_to(data, doc, kinds) -> list | None:
    """A random place holding a value of `kinds`, each level's candidate keys equally likely (so a record's
    `loss` is as likely as all of its matrix statistics together); None if there is none."""
    if not _holds(doc, kinds) or not isinstance(doc, (dict, list)):
        return None
    path, node = [], doc
    while isinstance(node, (dict, list)):
        keys = [k for k in (node if isinstance(node, dict) else range(len(node))) if _holds(node[k], kinds)]
        key = data.draw(st.sampled_from(keys), label="key")
        path.append(key)
        node = node[key]
    return path


def mutate_json(data, doc):
    """One random change: a value replaced by random JSON, a number by an extreme number, a string by odd text,
    a key or element deleted, one inserted, or the whole document replaced."""
    # Most weight on the changes that keep a field's type: a schema's type check passes, its ranges are tested.
    op = data.draw(st.sampled_from(["number"] * 4 + ["string"] * 2 + ["replace"] * 2 + ["delete", "insert", "whole"]),
                   label="op")
    if op == "whole" or not isinstance(doc, (dict, list)) or not doc:
        return data.draw(JSON, label="whole document")
    if op in ("number", "string"):  # the type a schema checks stays; the range or the characters change
        path = path_to(data, doc, (int, float) if op == "number" else (str,))
        if path:
            _parent(doc, path)[path[-1]] = data.draw(NUMBERS if op == "number" else TEXTS, label="new value")
            note(f"{op} at {path}")
            return doc
        op = "replace"
    path = random_path(data, doc)
    parent, key = _parent(doc, path), path[-1]
    if op == "replace":
        parent[key] = data.draw(JSON, label="new value")
    elif op == "delete":
        del parent[key]
    else:
        target = parent[key] if isinstance(parent[key], (dict, list)) else parent
        value = data.draw(JSON, label="inserted value")
        if isinstance(target, dict):
            target[data.draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), label="new key")] = value
        else:
            target.insert(data.draw(st.integers(0, len(target)), label="at"), value)
    note(f"{op} at {path}")
    return doc


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _parent(doc, path):
    return _at(doc, path[:-1])


def mutate_bytes(data, raw: bytes) -> bytes:
    """Raw damage: cut short, a byte changed, bytes inserted, or a span removed."""
    op = data.draw(st.sampled_from(["truncate", "flip", "insert", "cut"]), label="byte op")
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="position")
    note(f"{op} at byte {at}")
    if op == "truncate":
        return raw[:at]
    if op == "flip":
        return raw[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + raw[at + 1:]
    if op == "insert":
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[at:]
    return raw[:at] + raw[at + data.draw(st.integers(1, 64), label="span"):]


# --- running a command with a time budget -------------------------------------------------------------------


class Budget(BaseException):
    """The command ran past its time budget (a BaseException, so no `except Exception` can swallow it)."""


def run_as_a_terminal(*args) -> tuple[int, str, str]:
    """Like run_cli, but the output is encoded as a terminal's is: stdout strict UTF-8 (so a character that cannot
    be printed fails here as it would for the user), stderr UTF-8 with backslashes for the rest."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main([str(a) for a in args])
    return rc, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8")


def run_bounded(*args, seconds: float = 10):
    """run_as_a_terminal(*args), or raise Budget after `seconds`."""
    def on_alarm(signum, frame):
        raise Budget

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return run_as_a_terminal(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(name: str, *args, seconds: float = 10) -> int | None:
    """Run one command; assert it worked, or exited 2 with one line (a resume may also diverge, exit 1, in one
    line). Its exit status; None if it was still training at the end of its budget, as the file asked."""
    try:
        rc, out, err = run_bounded(*args, seconds=seconds)
    except Budget as e:
        frames = traceback.extract_tb(e.__traceback__)
        if any(f.filename.endswith(os.path.join("microgpt", "train.py")) for f in frames):
            return None  # training the many steps the file asked for: working as if valid
        raise AssertionError(f"{name} hung: {traceback.format_tb(e.__traceback__)[-1]}") from None
    # In this process numpy is already loaded, so a saved --threads adds a note a fresh process would not print.
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert "Traceback" not in err, err
    if rc == 0:
        return rc
    if rc == 1 and name == "resume":
        assert len(lines) == 1 and re.match(r"microgpt: (training diverged|interrupted at step \d+, where)",
                                            lines[0]), err
        return rc
    assert rc == 2, (name, rc, err)
    assert len(lines) == 1 and lines[0].startswith("microgpt: error: "), (name, err)
    return rc


# --- the valid files the mutations start from ----------------------------------------------------------------


def _stopped_run(root: Path, data: Path, *more) -> Path:
    """A checkpoint folder of a 20-step run stopped after step 12, with its metrics file."""
    folder = root / "run"
    run_cli_interrupted("train", "--data", data, *SMALL_FLAGS, "--steps", "20", "--checkpoint-every", "5",
                        "--num-samples", "2", "--quiet", "--out", folder, *more, step=12)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A stopped run of the book's kind: one document per line."""
    root = tmp_path_factory.mktemp("fuzz")
    return _stopped_run(root, write_docs(root / "docs.txt", TINY_DOCS))


@pytest.fixture(scope="module")
def text_base(tmp_path_factory) -> Path:
    """A stopped run on a text stream: windows drawn from a generator of their own, held-out windows."""
    root = tmp_path_factory.mktemp("fuzz-text")
    text = root / "text.txt"
    text.write_text("\n".join(TINY_DOCS * 4) + "\n", encoding="utf-8")
    return _stopped_run(root, text, "--data-format", "text", "--eval-windows", "20")


def readers(folder: Path) -> list[tuple[str, list]]:
    """Every command that reads a checkpoint, as a user types it; resume last (it writes)."""
    return [("sample", ["sample", "--checkpoint", folder, "--num-samples", "2", "--max-tokens", "40"]),
            ("eval", ["eval", "--checkpoint", folder, "--num-samples", "2"]),
            ("resume", ["train", "--resume", folder, "--num-samples", "2", "--quiet"])]


def _config(meta, key: str, default: int = 0) -> int:
    try:
        value = meta["config"][key]
    except (TypeError, KeyError):
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def heavy(meta) -> bool:
    """Valid but not milliseconds: a batch of thousands of documents (the memory check lets it through)."""
    return _config(meta, "batch_size") > 1000


def long_run(meta) -> bool:
    """A resume the file asks to train for thousands of steps more: a short budget is enough to see it train."""
    step = meta.get("step") if isinstance(meta, dict) else None
    return isinstance(step, int) and _config(meta, "num_steps") - step > 1000


def slow_validation(meta) -> bool:
    """Valid but not milliseconds: a text run asking for a hundred thousand validation windows (they fit in
    memory, so nothing refuses them; evaluating them takes seconds to minutes)."""
    return _config(meta, "eval_windows") > 100_000


def assert_readable_after(folder: Path) -> None:
    """What a resume wrote, the tool reads back: its checkpoint and its metrics file."""
    load_checkpoint(folder)
    if (folder / "metrics.jsonl").exists():
        read_metrics(folder / "metrics.jsonl")


def check_checkpoint_folder(folder: Path, meta=None) -> None:
    for name, args in readers(folder):
        rc = outcome(name, *args, seconds=2 if name == "resume" and long_run(meta) else 10)
        if name == "resume" and rc == 0:
            assert_readable_after(folder)


def _parsed(raw: bytes):
    """The JSON value of a file's or a line's bytes, read as UTF-8 as the tool reads them; None if they are not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


# --- checkpoint.json -----------------------------------------------------------------------------------------


@fuzz_settings(60)
@given(data=st.data())
def test_a_mutated_checkpoint_json_works_or_is_one_line(base, text_base, data):
    base = data.draw(st.sampled_from([base, text_base]), label="checkpoint")
    meta = json.loads((base / "checkpoint.json").read_text(encoding="utf-8"))
    raw = data.draw(st.booleans(), label="raw bytes")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(base, folder)
        if raw:
            payload = mutate_bytes(data, (base / "checkpoint.json").read_bytes())
            parsed = _parsed(payload)
            if parsed is not None and (slow_validation(parsed) or heavy(parsed)):
                return
            meta = parsed
        else:
            for _ in range(data.draw(st.integers(1, 3), label="changes")):
                meta = mutate_json(data, meta)
            if slow_validation(meta) or heavy(meta):
                return
            payload = json.dumps(meta, indent=1).encode("utf-8")
        (folder / "checkpoint.json").write_bytes(payload)
        check_checkpoint_folder(folder, meta)


# --- the state file, with its sha256 updated so only the content checks can tell -----------------------------


def _split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


@fuzz_settings(40)
@given(data=st.data())
def test_a_mutated_state_file_with_a_matching_sha256_works_or_is_one_line(base, data):

    meta = json.loads((base / "checkpoint.json").read_text(encoding="utf-8"))
    raw = (base / meta["state_file"]).read_bytes()
    header, body = _split_safetensors(raw)
    where = data.draw(st.sampled_from(["header", "header", "bytes", "data"]), label="where")
    if where == "header":
        header = mutate_json(data, header)
        text = json.dumps(header).encode("utf-8")
        length = data.draw(st.sampled_from([len(text), len(text)]) | st.integers(0, 2 ** 64 - 1), label="length")
        state = struct.pack("<Q", length) + text + body
    elif where == "data":  # the numbers themselves: any 8 bytes may be a nan, an inf or a denormal
        at = 8 * data.draw(st.integers(0, len(body) // 8 - 1), label="number")
        number = data.draw(st.binary(min_size=8, max_size=8) | st.sampled_from(
            [struct.pack("<d", x) for x in (math.nan, math.inf, -math.inf, 1e308, 5e-324)]), label="value")
        state = raw[:len(raw) - len(body)] + body[:at] + number + body[at + 8:]
    else:
        state = mutate_bytes(data, raw)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(base, folder)
        (folder / meta["state_file"]).write_bytes(state)
        meta["state_sha256"] = hashlib.sha256(state).hexdigest()
        (folder / "checkpoint.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        check_checkpoint_folder(folder)


# --- metrics files -------------------------------------------------------------------------------------------


def mutate_metrics(data, raw: bytes) -> bytes:
    """Changes to one or more lines (the run header as likely as all the steps), or raw damage to the file."""
    lines = raw.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3), label="line changes")):
        op = data.draw(st.sampled_from(["json", "json", "json", "column", "extreme column", "bytes", "new line",
                                        "drop line", "repeat line"]), label="metrics op")
        index = data.draw(st.sampled_from([0]) | st.integers(0, len(lines) - 1), label="line")
        note(f"{op} on line {index + 1}")
        if op == "json":
            record = _parsed(lines[index])
            if record is None:
                continue
            lines[index] = json.dumps(mutate_json(data, record)).encode("utf-8") + b"\n"
        elif op in ("column", "extreme column"):  # one field of every step set to one value: a column changed
            record = _parsed(lines[-1])
            kinds = (int, float, str) if op == "column" else (int, float)
            path = path_to(data, record, kinds) if isinstance(record, dict) else None
            if not path:
                continue
            value = data.draw(NUMBERS | TEXTS | JSON if op == "column" else st.sampled_from(EXTREMES),
                              label="column value")
            note(f"{path} = {value!r} on every step")
            for i, line in enumerate(lines):
                record = _parsed(line)
                try:
                    if isinstance(record, dict) and record.get("type") == "step":
                        _parent(record, path)[path[-1]] = value
                        lines[i] = json.dumps(record).encode("utf-8") + b"\n"
                except (KeyError, IndexError, TypeError):
                    pass
        elif op == "bytes":
            lines[index] = mutate_bytes(data, lines[index])
        elif op == "new line":
            lines.insert(index, json.dumps(data.draw(JSON, label="line")).encode("utf-8") + b"\n")
        elif op == "drop line" and len(lines) > 1:
            del lines[index]
        else:
            lines.insert(index, lines[index])
    return b"".join(lines)


@fuzz_settings(40)
@given(data=st.data())
def test_a_mutated_metrics_file_works_or_is_one_line(base, data):
    good = base / "metrics.jsonl"
    mutated = mutate_metrics(data, good.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "run"
        shutil.copytree(base, folder)
        (folder / "metrics.jsonl").write_bytes(mutated)
        outcome("plot", "plot", folder / "metrics.jsonl", "-o", tmp / "loss.png")
        outcome("compare", "compare", good, folder / "metrics.jsonl", "-o", tmp / "compare.png")
        if outcome("resume", "train", "--resume", folder, "--num-samples", "2") == 0:
            assert_readable_after(folder)


@pytest.mark.parametrize("which", ["base", "text_base"])
def test_the_starting_files_are_valid(request, tmp_path, which):
    """The mutations start from files every command takes (else every example would be a refusal)."""
    base = request.getfixturevalue(which)
    meta = json.loads((base / "checkpoint.json").read_text(encoding="utf-8"))
    CHECKPOINT(meta, "")
    lines = (base / "metrics.jsonl").read_bytes().splitlines()
    RUN_HEADER(json.loads(lines[0]), "")
    for line in lines[1:]:
        STEP(json.loads(line), "")
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    assert outcome("plot", "plot", folder / "metrics.jsonl", "-o", tmp_path / "loss.png") == 0
    for name, args in readers(folder):
        assert outcome(name, *args) == 0
    assert load_checkpoint(folder).step == 20

"""Chapter 2: the documents (SPEC section 2), "the same start as training" (`prepare`), the batches
of each step, text mode, the packaged names dataset, and the verified, cached download of a URL.

The download is exercised against a real HTTP server on 127.0.0.1 serving files this test
writes, so fetching, the sha256 check, caching and the error messages all run for real.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NAMES, closed_port, write_docs

import microgpt.data
from microgpt.config import Config, ConfigError
from microgpt.data import (
    NAMES_SHA256,
    DataError,
    batch_docs,
    cache_dir,
    fetch,
    fingerprint,
    load_docs,
    load_text,
    names_path,
    prepare,
    resolve_data,
    shuffled,
    split_docs,
)
from microgpt.errors import UserError


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# load_docs

def test_load_docs_strips_and_drops_empty_lines(tmp_path):
    path = write(tmp_path / "docs.txt", b"  emma \n\n\tolivia\t\n   \nava\n\n")
    assert load_docs(path) == ["emma", "olivia", "ava"]


def test_load_docs_keeps_inner_spaces_and_file_order(tmp_path):
    path = write(tmp_path / "docs.txt", b"zoe\nmary jane\nabe")  # no final newline
    assert load_docs(path) == ["zoe", "mary jane", "abe"]


def test_load_docs_handles_crlf_and_cr(tmp_path):
    crlf = write(tmp_path / "crlf.txt", b"emma\r\nolivia\r\n\r\nava\r\n")
    assert load_docs(crlf) == ["emma", "olivia", "ava"]
    cr = write(tmp_path / "cr.txt", b"emma\rolivia\r")
    assert load_docs(cr) == ["emma", "olivia"]


def test_load_docs_reads_utf8(tmp_path):
    path = write(tmp_path / "docs.txt", "zoë\n日本\n".encode())
    assert load_docs(path) == ["zoë", "日本"]


def test_the_names_dataset_ships_in_the_package_with_its_pinned_sha256():
    path = names_path()
    assert path == NAMES and path.parent.name == "datasets"
    assert Path(microgpt.data.__file__).parent in path.parents
    assert hashlib.sha256(path.read_bytes()).hexdigest() == NAMES_SHA256  # SPEC section 2
    assert NAMES_SHA256 == "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


def test_a_damaged_names_dataset_is_refused(tmp_path, monkeypatch):
    datasets = tmp_path / "microgpt" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "names.txt").write_bytes(NAMES.read_bytes()[:-10])
    monkeypatch.setattr(microgpt.data, "DATASETS", datasets)
    with pytest.raises(DataError, match="missing or damaged: reinstall"):
        names_path()
    (datasets / "names.txt").unlink()
    with pytest.raises(DataError, match="--data FILE"):
        names_path()


def test_names_has_32033_docs():
    docs = load_docs(NAMES)
    assert len(docs) == 32033
    assert docs[:3] == ["emma", "olivia", "ava"]  # file order, before the shuffle
    assert all(doc == doc.strip() and doc for doc in docs)


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "whitespace", "binary", "latin-1"])
def test_unreadable_data_raises_data_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"data-{kind}.txt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "whitespace":
        path.write_bytes(b"  \n\t\n\r\n   ")
    elif kind == "binary":
        path.write_bytes(b"emma\n\x00\x01\x02olivia\n")
    elif kind == "latin-1":
        path.write_bytes("zoë\nrenée\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_docs(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


# ---------------------------------------------------------------------------------------------
# fingerprint and split_docs

def test_fingerprint_is_stable():
    docs = ["emma", "olivia", "ava"]
    fp = fingerprint(docs)
    assert fp == fingerprint(list(docs))
    assert len(fp) == 64 and int(fp, 16) >= 0  # a sha256 hex digest
    assert fingerprint(load_docs(NAMES)) == fingerprint(load_docs(NAMES))


@pytest.mark.parametrize("changed", [
    ["emma", "olivia", "avA"],  # one character
    ["olivia", "emma", "ava"],  # order
    ["emma", "olivia"],  # one document fewer
    ["emma", "olivia", "ava", "mia"],  # one more
    ["emmao", "livia", "ava"],  # the same characters, split differently
])
def test_fingerprint_changes_with_the_documents(changed):
    assert fingerprint(changed) != fingerprint(["emma", "olivia", "ava"])


def test_split_docs_holds_out_the_last_fraction():
    docs = [f"doc{i}" for i in range(100)]
    train, val = split_docs(docs, 0.1)
    assert train == docs[:90]
    assert val == docs[90:]
    assert split_docs(docs, 0.25) == (docs[:75], docs[75:])


def test_split_docs_without_validation_keeps_everything():
    docs = ["a", "b", "c"]
    train, val = split_docs(docs, 0.0)
    assert train == docs and val == []


@pytest.mark.parametrize("n_docs, fraction", [(10, 0.01), (1, 0.5)])
def test_split_docs_refuses_an_empty_validation_set(n_docs, fraction):
    with pytest.raises(DataError, match="val-fraction"):
        split_docs([f"doc{i}" for i in range(n_docs)], fraction)


# ---------------------------------------------------------------------------------------------
# prepare: the same start as training


def test_prepare_shuffles_with_the_one_generator_then_hands_it_over(tmp_path):
    """SPEC section 1: the shuffle is the generator's first use; prepare returns it right after."""
    config = Config(seed=5).validate()
    data, rng = prepare(config)
    twin = random.Random(5)
    docs = shuffled(load_docs(NAMES), twin)
    assert data.docs == docs == data.train_docs and data.val_docs == []
    assert rng.getstate() == twin.getstate()
    assert data.tokenizer.chars == list("abcdefghijklmnopqrstuvwxyz")
    assert data.format == "lines" and data.path == NAMES and data.size == 32033
    assert data.fingerprint == fingerprint(load_docs(NAMES))  # of the file order, not the shuffle


def test_prepare_splits_off_validation_and_keeps_the_vocabulary_of_all_documents(tmp_path):
    path = write_docs(tmp_path / "docs.txt", ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "xyz"])
    config = Config(val_fraction=0.2).validate()
    data, _ = prepare(config, path)
    twin = random.Random(42)
    docs = load_docs(path)
    twin.shuffle(docs)
    assert data.train_docs == docs[:8] and data.val_docs == docs[8:]
    assert data.tokenizer.chars == sorted(set("abcdefghijklmnopqrxyz"))  # held-out characters included
    assert data.val_examples() == [data.tokenizer.example(doc) for doc in docs[8:]]


def test_prepare_with_a_checkpoints_vocabulary(tmp_path):
    path = write_docs(tmp_path / "docs.txt", ["abc", "cab"])
    data, _ = prepare(Config().validate(), path, vocab=list("abcz"))
    assert data.tokenizer.chars == list("abcz") and data.tokenizer.BOS == 4


def test_examples_are_the_books_document_per_step_cycling():
    config = Config().validate()
    data, _ = prepare(config)
    for step in (0, 1, 32032, 32033, 40000):
        doc = data.docs[step % len(data.docs)]  # SPEC section 6.1
        assert data.examples(step) == [data.tokenizer.example(doc)]


def test_batches_take_the_next_documents_and_split_over_processes(tmp_path):
    path = write_docs(tmp_path / "docs.txt", [f"{c}" * (i + 1) for i, c in enumerate("abcdefg")])
    config = Config(batch_size=4).validate()
    data, _ = prepare(config, path)
    docs = data.train_docs
    assert batch_docs(docs, 0, 4) == docs[:4]
    assert batch_docs(docs, 1, 4) == docs[4:] + docs[:1]  # cycling through the 7 documents
    assert batch_docs(docs, 5, 1) == [docs[5]]
    whole = data.examples(3)
    assert whole == [data.tokenizer.example(d) for d in batch_docs(docs, 3, 4)]
    halves = [data.examples(3, rank, 2) for rank in (0, 1)]
    assert halves == [whole[:2], whole[2:]]
    assert [data.examples(3, rank, 4) for rank in range(4)] == [[x] for x in whole]


def test_a_negative_seed_is_refused():
    with pytest.raises(ConfigError, match="--seed must be 0 or more"):
        Config(seed=-1).validate()


# ---------------------------------------------------------------------------------------------
# text mode: one stream of characters, windows of block_size + 1


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


def test_text_mode_holds_out_the_end_and_reads_windows(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = Config(data_format="text", block_size=8, batch_size=3).validate()
    assert config.val_fraction == 0.1  # text mode's default
    data, rng = prepare(config, path)
    assert rng.getstate() == random.Random(42).getstate()  # nothing to shuffle: the generator is untouched
    ids = data.tokenizer.encode(TEXT)
    n_val = int(len(ids) * 0.1)
    assert data.train_ids == ids[:len(ids) - n_val] and data.val_ids == ids[len(ids) - n_val:]
    assert "\n" in data.tokenizer.chars and " " in data.tokenizer.chars
    assert data.size == len(TEXT) and data.fingerprint == fingerprint(TEXT)
    # Each step's windows start at offsets drawn from a generator of their own, seeded from --seed.
    windows = random.Random("42:windows")
    for step in range(3):
        batch = data.examples(step)
        offsets = [windows.randrange(len(data.train_ids) - 9 + 1) for _ in range(3)]
        assert data.last_offsets == offsets
        assert batch == [data.train_ids[o:o + 9] for o in offsets]
    # Validation: --eval-windows windows of the held-out part, the same every time.
    val = data.val_examples()
    assert len(val) == config.eval_windows and all(len(w) == 9 for w in val)
    assert val == data.val_examples()
    assert all(any(data.val_ids[o:o + 9] == w for o in range(len(data.val_ids) - 8)) for w in val[:5])


def test_text_too_short_for_a_window_is_refused(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghij" * 3, encoding="utf-8")
    with pytest.raises(DataError, match="--block-size"):
        prepare(Config(data_format="text", block_size=16).validate(), path)


def test_text_keeps_every_character_and_normalises_line_ends(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"  a b\r\n\r\nc\rd  ")
    assert load_text(path) == "  a b\n\nc\nd  "


# ---------------------------------------------------------------------------------------------
# --data and --sha256 for a local file


def test_resolve_data_checks_a_local_files_sha256(tmp_path):
    path = write_docs(tmp_path / "docs.txt", ["emma"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve_data(path, digest) == path
    assert resolve_data(path, digest.upper()) == path
    with pytest.raises(DataError, match="not the 0000"):
        resolve_data(path, "0" * 64)
    assert resolve_data(None) == NAMES
    with pytest.raises(DataError, match="--data URL"):
        resolve_data(None, digest)


# ---------------------------------------------------------------------------------------------
# fetch: download once, verify, cache


class CountingServer:
    """http.server on 127.0.0.1 in a thread, serving a folder and counting GET requests."""

    def __init__(self, root: Path) -> None:
        counter = self
        self.requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                counter.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[CountingServer, Path, Path]]:
    """(server, the folder it serves, the cache folder); no proxy may intercept 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MICROGPT_CACHE", str(cache))
    root = tmp_path / "www"
    root.mkdir()
    server = CountingServer(root)
    try:
        yield server, root, cache
    finally:
        server.close()


PAYLOAD = b"emma\nolivia\nava\n"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def quiet(text: str) -> None:
    pass


@pytest.fixture
def names_served(served):
    """`served`, with PAYLOAD as names.txt."""
    server, root, cache = served
    write(root / "names.txt", PAYLOAD)
    return server, cache


def fetch_names(server) -> Path:
    """names.txt from the test server, checked against PAYLOAD's sha256, without progress lines."""
    return fetch(server.url("names.txt"), sha256=PAYLOAD_SHA, progress=quiet)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MICROGPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "microgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "microgpt"


def test_download_verifies_caches_and_reuses(names_served):
    server, cache = names_served
    path = fetch_names(server)
    assert path.parent == cache and path.name.endswith("-names.txt")
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/names.txt"]
    assert load_docs(path) == ["emma", "olivia", "ava"]
    # Second call: served from the cache, the server is not asked again, with or without the sha256.
    assert fetch_names(server) == path
    assert fetch(server.url("names.txt"), progress=quiet) == path
    assert server.requests == ["/names.txt"]
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary file left


def test_a_download_without_sha256_says_its_sha256(served):
    server, root, _ = served
    write(root / "play.txt", PAYLOAD)
    said: list[str] = []
    path = fetch(server.url("play.txt"), progress=said.append)
    assert path.read_bytes() == PAYLOAD
    assert any(PAYLOAD_SHA in line and str(path) in line for line in said)


def test_urls_with_the_same_file_name_are_cached_apart(served):
    server, root, cache = served
    (root / "a").mkdir()
    (root / "b").mkdir()
    write(root / "a" / "input.txt", b"one\n")
    write(root / "b" / "input.txt", b"two\n")
    first = fetch(server.url("a/input.txt"), progress=quiet)
    second = fetch(server.url("b/input.txt"), progress=quiet)
    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"one\n", b"two\n")
    assert first.name.endswith("input.txt") and second.name.endswith("input.txt")


def test_checksum_mismatch_caches_nothing(served):
    server, root, cache = served
    write(root / "names.txt", b"tampered\n")
    cache.mkdir()  # an existing, empty cache folder: it must stay empty
    with pytest.raises(DataError) as info:
        fetch_names(server)
    assert server.requests == ["/names.txt"]
    assert "sha256" in str(info.value) and "nothing was cached" in str(info.value)
    assert list(cache.iterdir()) == []  # neither the file nor a temporary file
    # Nothing was cached, so the next call asks the server again (and fails again).
    with pytest.raises(DataError):
        fetch_names(server)
    assert server.requests == ["/names.txt", "/names.txt"]


def test_corrupt_cache_is_downloaded_again(names_served):
    server, cache = names_served
    first = fetch_names(server)
    write(first, b"half a fi")
    path = fetch_names(server)
    assert path == first and path.read_bytes() == PAYLOAD
    assert server.requests == ["/names.txt", "/names.txt"]
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_unreachable_url_names_the_url_and_the_data_flag(served):
    _, _, cache = served
    url = f"http://127.0.0.1:{closed_port()}/names.txt"
    with pytest.raises(DataError) as info:
        fetch(url, sha256=PAYLOAD_SHA, timeout=5, progress=quiet)
    message = str(info.value)
    assert url in message
    assert "--data FILE" in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_missing_remote_file_raises_data_error(served):
    server, _, cache = served
    with pytest.raises(DataError) as info:
        fetch(server.url("nowhere.txt"), sha256=PAYLOAD_SHA, progress=quiet)
    assert server.requests == ["/nowhere.txt"]
    assert "--data" in str(info.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_prepare_reads_a_url_once(served, tmp_path):
    server, root, cache = served
    shutil.copy(NAMES, root / "names.txt")
    url = server.url("names.txt")
    config = Config(seed=3).validate()
    from_url, _ = prepare(config, url, sha256=NAMES_SHA256)
    local, _ = prepare(config)
    assert from_url.docs == local.docs and from_url.fingerprint == local.fingerprint
    prepare(config, url)
    assert server.requests == ["/names.txt"]
    assert resolve_data(url) == from_url.path and from_url.path.parent == cache

"""Chapter 2: the documents (SPEC section 2), and the verified, cached download of names.txt.

The download is exercised against a real HTTP server on 127.0.0.1 serving files this test
writes, so fetching, the sha256 check, caching and the error messages all run for real.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NAMES

from microgpt.data import DataError, default_dataset, fingerprint, load_docs, split_docs
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
# default_dataset: download, verify, cache

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
    monkeypatch.delenv("MICROGPT_NAMES_URL", raising=False)
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


def test_download_verifies_caches_and_reuses(served):
    server, root, cache = served
    write(root / "names.txt", PAYLOAD)
    path = default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA)
    assert path == cache / "names.txt"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/names.txt"]
    assert load_docs(path) == ["emma", "olivia", "ava"]
    # Second call: served from the cache, the server is not asked again.
    assert default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA) == path
    assert server.requests == ["/names.txt"]
    assert sorted(p.name for p in cache.iterdir()) == ["names.txt"]  # no temporary file left


def test_checksum_mismatch_caches_nothing(served):
    server, root, cache = served
    write(root / "names.txt", b"tampered\n")
    cache.mkdir()  # an existing, empty cache folder: it must stay empty
    with pytest.raises(DataError) as info:
        default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA)
    assert server.requests == ["/names.txt"]
    assert "sha256" in str(info.value)
    assert list(cache.iterdir()) == []  # neither names.txt nor a temporary file
    # Nothing was cached, so the next call asks the server again (and fails again).
    with pytest.raises(DataError):
        default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA)
    assert server.requests == ["/names.txt", "/names.txt"]


def test_corrupt_cache_is_downloaded_again(served):
    server, root, cache = served
    write(root / "names.txt", PAYLOAD)
    cache.mkdir()
    write(cache / "names.txt", b"half a fi")
    path = default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/names.txt"]
    assert sorted(p.name for p in cache.iterdir()) == ["names.txt"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_names_the_cache_path_and_data_flag(served):
    _, _, cache = served
    url = f"http://127.0.0.1:{closed_port()}/names.txt"
    with pytest.raises(DataError) as info:
        default_dataset(url=url, sha256=PAYLOAD_SHA, timeout=5)
    message = str(info.value)
    assert str(cache / "names.txt") in message
    assert "--data" in message
    assert url in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_missing_remote_file_raises_data_error(served):
    server, _, cache = served
    with pytest.raises(DataError) as info:
        default_dataset(url=server.url("nowhere.txt"), sha256=PAYLOAD_SHA)
    assert server.requests == ["/nowhere.txt"]
    assert "--data" in str(info.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_names_url_environment_override(served, monkeypatch):
    server, root, cache = served
    write(root / "mirror.txt", PAYLOAD)
    monkeypatch.setenv("MICROGPT_NAMES_URL", server.url("mirror.txt"))
    path = default_dataset(sha256=PAYLOAD_SHA)
    assert server.requests == ["/mirror.txt"]
    assert path == cache / "names.txt"
    assert path.read_bytes() == PAYLOAD


def test_explicit_url_wins_over_the_environment(served, monkeypatch):
    server, root, _ = served
    write(root / "names.txt", PAYLOAD)
    monkeypatch.setenv("MICROGPT_NAMES_URL", server.url("mirror.txt"))
    default_dataset(url=server.url("names.txt"), sha256=PAYLOAD_SHA)
    assert server.requests == ["/names.txt"]

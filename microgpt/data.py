"""Chapter 2: the documents.

A dataset is a UTF-8 text file with one document per line. The default dataset, the 32,033
names of makemore, is downloaded from a pinned URL on first use, checked against its sha256
and cached, so every reader trains on the very same bytes. Standard library only.

Exports: `load_docs`, `default_dataset`, `fingerprint`, `split_docs`, `DataError`,
`NAMES_URL`, `NAMES_SHA256`.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

from .errors import UserError

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/988aa59/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


class DataError(UserError):
    """A dataset that cannot be read or fetched."""


def load_docs(path: str | os.PathLike) -> list[str]:
    """The documents of a text file: each line stripped, empty lines dropped, in file order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist: pass --data with a text file, one document per line")
    if path.is_dir():
        raise DataError(f"data path {path} is a folder: pass --data with a text file, one document per line")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({e.strerror}): check its permissions "
                        "or pass another --data") from None
    if b"\0" in raw:
        raise DataError(f"data file {path} looks binary (it contains NUL bytes): "
                        "pass a UTF-8 text file with one document per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from None
    # Lines as Python's text files give them: \n, \r\n and \r all end a line.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    docs = [doc for line in lines if (doc := line.strip())]
    if not docs:
        raise DataError(f"data file {path} has no documents (it is empty or blank): "
                        "put one document per line")
    return docs


def fingerprint(docs: list[str]) -> str:
    """sha256 of the documents in file order: a checkpoint records it to refuse other data."""
    return hashlib.sha256("\n".join(docs).encode("utf-8")).hexdigest()


def split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Chapter 7: hold out the last `val_fraction` of the (shuffled) documents for validation."""
    n_val = int(len(docs) * val_fraction)
    if val_fraction > 0 and (n_val == 0 or n_val == len(docs)):
        raise DataError(f"--val-fraction {val_fraction} leaves {len(docs) - n_val} training and {n_val} "
                        f"validation documents out of {len(docs)}: pick a fraction that leaves both non-empty")
    return (docs[:len(docs) - n_val], docs[len(docs) - n_val:]) if n_val else (docs, [])


def shuffled(docs: list[str], rng: random.Random) -> list[str]:
    """The first use of the one random generator: shuffle the documents once, after loading."""
    docs = list(docs)
    rng.shuffle(docs)
    return docs


def cache_dir() -> Path:
    """$MICROGPT_CACHE, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache)/microgpt."""
    if os.environ.get("MICROGPT_CACHE"):
        return Path(os.environ["MICROGPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "microgpt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_dataset(url: str | None = None, sha256: str = NAMES_SHA256, timeout: float = 30.0) -> Path:
    """Path of the cached names.txt, downloading and verifying it first if needed.

    The URL is `url`, else $MICROGPT_NAMES_URL, else the pinned makemore commit. The file is
    cached only once its sha256 matches, and written atomically, so a failed or interrupted
    download leaves nothing behind.
    """
    target = cache_dir() / "names.txt"
    if target.is_file() and _sha256(target.read_bytes()) == sha256:
        return target
    import http.client  # only a first run downloads; keep every other start fast
    import urllib.error
    import urllib.request

    url = url or os.environ.get("MICROGPT_NAMES_URL") or NAMES_URL
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download the names dataset from {url} ({reason}): put names.txt at {target} "
                        "or pass --data FILE") from None
    got = _sha256(payload)
    if got != sha256:
        raise DataError(f"the file downloaded from {url} has sha256 {got[:12]}..., expected {sha256[:12]}...; "
                        f"nothing was cached: check the URL, or put names.txt at {target} or pass --data FILE")
    write_atomic(target, payload)
    return target


def write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; the user's file should not be
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

"""Chapter 2: the data, and the start every command shares with training.

The book's data is a UTF-8 text file with one document per line (`lines`). The default
dataset, the 32,033 names of makemore, ships inside the package, checked against its pinned
sha256, so the first run needs no network. A user's long text (a play, a book, code) can also be
read as one stream of characters, newlines included (`text`): a training example is then a
window of block_size + 1 characters. `--data` also takes an http(s) URL, downloaded once into
the cache. Standard library only.

`prepare` is "the same start as training": read the data, shuffle the documents with the one
random generator (SPEC 1.1), build the tokenizer. Training, evaluation, gradcheck, graph, the
benchmarks and the tests all begin with it, so they all see the very same data in the very
same order.

Exports: `prepare`, `Dataset`, `load_docs`, `load_text`, `resolve_data`, `fetch`, `fingerprint`,
`split_docs`, `batch_docs`, `shuffled`, `names_path`, `cache_dir`, `atomic_file`, `write_atomic`,
`not_a_regular_file`, `DataError`,
`NAMES_SHA256`, `SHAKESPEARE_URL`, `SHAKESPEARE_SHA256`.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .config import Config
from .errors import UserError
from .tokenizer import Tokenizer

NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"  # makemore 988aa59
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
MAX_DATA_BYTES = 1 << 30  # a character-level model on more than 1 GiB of text is not what this tool is for
DATASETS = Path(__file__).resolve().parent / "datasets"  # the package's own data files


class DataError(UserError):
    """A dataset that cannot be read or fetched."""


# --- where the data comes from ----------------------------------------------------------------


def names_path() -> Path:
    """The packaged names.txt, checked against its pinned sha256 (a damaged install is refused)."""
    path = DATASETS / "names.txt"
    if not path.is_file() or _sha256(path.read_bytes()) != NAMES_SHA256:
        raise DataError(f"the packaged names dataset {path} is missing or damaged: reinstall microgpt "
                        "(pip install -e . from the clone), or pass --data FILE")
    return path


def cache_dir() -> Path:
    """$MICROGPT_CACHE, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache)/microgpt."""
    if os.environ.get("MICROGPT_CACHE"):
        return Path(os.environ["MICROGPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "microgpt"


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def resolve_data(spec: str | os.PathLike | None, sha256: str | None = None) -> Path:
    """The file behind --data: the packaged names (None), a local path, or an http(s) URL fetched once."""
    if spec is None:
        if sha256 is not None:
            raise DataError("--sha256 checks a downloaded file: pass it together with --data URL")
        return names_path()
    if is_url(str(spec)):
        return fetch(str(spec), sha256)
    path = Path(spec)
    if sha256 is not None:
        got = _sha256(_read_bytes(path))
        if got != sha256.lower():
            raise DataError(f"data file {path} has sha256 {got}, not the {sha256} given with --sha256: "
                            "check the file, or drop --sha256")
    return path


def fetch(url: str, sha256: str | None = None, timeout: float = 30.0,
          progress: Callable[[str], None] | None = None) -> Path:
    """Download `url` once into the cache (atomically) and return the cached file.

    The file is kept under a name made from the URL, so a second call reads it from the cache
    without the network. With `sha256` the download must match it, and a cached copy is checked
    too; without, the sha256 is printed so the user can pin it next time.
    """
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    target = cache_dir() / _cache_name(url)
    if target.is_file():
        if sha256 is None or _sha256(target.read_bytes()) == sha256.lower():
            return target
    import http.client  # only a first run downloads; keep every other start fast
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            chunks, done, last = [], 0, 0.0
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                done += len(chunk)
                if done > MAX_DATA_BYTES:
                    raise DataError(f"{url} is larger than {MAX_DATA_BYTES >> 20} MiB: download a smaller file")
                if time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    of = f" of {total / 1e6:.1f} MB" if total else ""
                    say(f"downloading {url}: {done / 1e6:.1f} MB{of}")
            payload = b"".join(chunks)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download {url} ({reason}): check the address and the network, "
                        f"or download it yourself and pass --data FILE") from None
    got = _sha256(payload)
    if sha256 is not None and got != sha256.lower():
        raise DataError(f"the file downloaded from {url} has sha256 {got}, expected {sha256}; nothing was "
                        "cached: check the URL, or the --sha256 you gave")
    write_atomic(target, payload)
    say(f"downloaded {url}: {len(payload):,} bytes, sha256 {got}, cached as {target}")
    return target


def _cache_name(url: str) -> str:
    """A file name for a URL's download: its last path part, made unique by a hash of the whole URL."""
    stem = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[-60:]
    return f"{_sha256(url.encode('utf-8'))[:12]}-{stem}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reading -------------------------------------------------------------------------------------


def not_a_regular_file(info: os.stat_result) -> str | None:
    """What keeps an existing path from being read or written as a file ("is a folder", ...); None if nothing."""
    if stat.S_ISDIR(info.st_mode):
        return "is a folder"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def _read_bytes(path: Path) -> bytes:
    """A data file's bytes, only if it is a regular file of a sane size (a FIFO would block forever)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist: pass --data with a text file") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({e.strerror}): pass another --data") from None
    if problem := not_a_regular_file(info):
        raise DataError(f"data path {path} {problem}: pass --data with a text file")
    if info.st_size > MAX_DATA_BYTES:
        raise DataError(f"data file {path} is {info.st_size / 2**30:.1f} GiB, more than this tool reads "
                        f"({MAX_DATA_BYTES >> 30} GiB): pass a smaller file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({e.strerror}): check its permissions "
                        "or pass another --data") from None


def load_text(path: str | os.PathLike) -> str:
    """A data file as text: UTF-8, no NUL bytes, with \\r\\n and \\r turned into \\n."""
    path = Path(path)
    raw = _read_bytes(path)
    if b"\0" in raw:
        raise DataError(f"data file {path} looks binary (it contains NUL bytes): pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_docs(path: str | os.PathLike) -> list[str]:
    """The documents of a text file: each line stripped, empty lines dropped, in file order."""
    docs = [doc for line in load_text(path).split("\n") if (doc := line.strip())]
    if not docs:
        raise DataError(f"data file {path} has no documents (it is empty or blank): put one document per line")
    return docs


def fingerprint(docs: list[str] | str) -> str:
    """sha256 of the documents in file order (or of the text): a checkpoint records it to refuse other data."""
    text = docs if isinstance(docs, str) else "\n".join(docs)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shuffled(docs: list[str], rng: random.Random) -> list[str]:
    """The first use of the one random generator: shuffle the documents once, after loading."""
    docs = list(docs)
    rng.shuffle(docs)
    return docs


def split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Chapter 7: hold out the last `val_fraction` of the (shuffled) documents for validation."""
    n_val = int(len(docs) * val_fraction)
    if val_fraction > 0 and (n_val == 0 or n_val == len(docs)):
        raise DataError(f"--val-fraction {val_fraction} leaves {len(docs) - n_val} training and {n_val} "
                        f"validation documents out of {len(docs)}: pick a fraction that leaves both non-empty")
    return (docs[:len(docs) - n_val], docs[len(docs) - n_val:]) if n_val else (docs, [])


def batch_docs(docs: list[str], step: int, batch_size: int) -> list[str]:
    """5.1: step s takes the next batch_size documents, cycling through the dataset.

    With batch_size 1 this is the book's docs[step % len(docs)].
    """
    return [docs[(step * batch_size + b) % len(docs)] for b in range(batch_size)]


# --- the dataset training reads ------------------------------------------------------------------


def derived_rng(seed: int, purpose: str) -> random.Random:
    """A generator of its own for `purpose`, seeded from --seed, so the book's one generator is not disturbed."""
    return random.Random(f"{seed}:{purpose}")


@dataclass
class Dataset:
    """What a run trains and validates on, tokenized.

    lines: `docs` are the shuffled documents, split into `train_docs` and `val_docs`; step s
    takes documents batch_docs(train_docs, s, batch_size), each as [BOS] + ids + [BOS].
    text: `train_ids` and `val_ids` are the stream's two parts; each batch row is a window of
    block_size + 1 ids at an offset drawn from `windows` (a generator of its own, SPEC 1 in text
    mode), and validation reads a fixed set of windows drawn once.
    """

    format: str
    path: Path
    tokenizer: Tokenizer
    fingerprint: str
    config: Config
    docs: list[str] = field(default_factory=list)
    train_docs: list[str] = field(default_factory=list)
    val_docs: list[str] = field(default_factory=list)
    train_ids: list[int] = field(default_factory=list)
    val_ids: list[int] = field(default_factory=list)
    windows: random.Random | None = None
    last_offsets: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Documents (lines) or characters (text) in the whole dataset."""
        return len(self.docs) if self.format == "lines" else len(self.train_ids) + len(self.val_ids)

    def examples(self, step: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        """5.1 and 5.2: the examples of training step `step` (0-based) for process `rank` of `world_size`.

        Every process computes the whole batch (the same draws) and keeps its own equal slice.
        """
        c = self.config
        if self.format == "lines":
            batch = [self.tokenizer.example(doc) for doc in batch_docs(self.train_docs, step, c.batch_size)]
        else:
            span = c.block_size + 1
            offsets = [self.windows.randrange(len(self.train_ids) - span + 1) for _ in range(c.batch_size)]
            self.last_offsets = offsets  # where the step's windows start, for the metrics file
            batch = [self.train_ids[o:o + span] for o in offsets]
        return batch[rank * len(batch) // world_size:(rank + 1) * len(batch) // world_size]

    def val_examples(self) -> list[list[int]]:
        """The held-out examples: every validation document, or the fixed validation windows."""
        if self.format == "lines":
            return [self.tokenizer.example(doc) for doc in self.val_docs]
        return self.windows_from(self.val_ids, "val") if self.val_ids else []

    def windows_from(self, ids: list[int], part: str) -> list[list[int]]:
        """Text mode: --eval-windows windows of block_size + 1 ids from `ids`, drawn once from a
        generator seeded from --seed and `part`, so the same part always gives the same windows."""
        span = self.config.block_size + 1
        rng = derived_rng(self.config.seed, f"eval-{part}")
        return [ids[o:o + span] for o in (rng.randrange(len(ids) - span + 1) for _ in range(self.config.eval_windows))]


def prepare(config: Config, data: str | os.PathLike | None = None, vocab: list[str] | None = None,
            sha256: str | None = None) -> tuple[Dataset, random.Random]:
    """The same start as training: (the dataset, the one generator ready for the initial weights).

    lines: read the documents, shuffle them with random.Random(seed) (its first use), split off the
    validation part, build the vocabulary from every document. text: read the stream, hold out
    its end, build the vocabulary from every character; the one generator is not used (there is
    nothing to shuffle) and the windows get a generator of their own. `vocab` (a checkpoint's)
    replaces the vocabulary built from the data; the data must then fit it.
    """
    config.validate()  # settles the mode's --val-fraction default, and refuses what cannot run
    path = resolve_data(data, sha256)
    rng = random.Random(config.seed)
    if config.data_format == "lines":
        all_docs = load_docs(path)
        docs = shuffled(all_docs, rng)
        train_docs, val_docs = split_docs(docs, config.val_fraction)
        tokenizer = Tokenizer(vocab) if vocab is not None else Tokenizer.from_docs(docs)
        dataset = Dataset("lines", path, tokenizer, fingerprint(all_docs), config, docs=docs,
                          train_docs=train_docs, val_docs=val_docs)
    else:
        text = load_text(path)
        tokenizer = Tokenizer(vocab) if vocab is not None else Tokenizer.from_docs([text])
        ids = tokenizer.encode(text)
        n_val = int(len(ids) * config.val_fraction)
        span = config.block_size + 1
        if len(ids) - n_val < span or (n_val and n_val < span):
            raise DataError(f"{path} has {len(ids):,} characters: with --val-fraction {config.val_fraction} "
                            f"its parts ({len(ids) - n_val:,} for training, {n_val:,} held out) must each hold "
                            f"a window of --block-size + 1 = {span} characters: use a longer text, a smaller "
                            "--block-size or another --val-fraction")
        dataset = Dataset("text", path, tokenizer, fingerprint(text), config, train_ids=ids[:len(ids) - n_val],
                          val_ids=ids[len(ids) - n_val:], windows=derived_rng(config.seed, "windows"))
    return dataset, rng


@contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A file to write in place of `path`: a uniquely named temporary file beside it, flushed to disk
    and renamed over `path` when the block ends (removed instead if the block raises).

    A reader sees the old file or the new one, never half of one; two writers never share a
    temporary file. `mode` is the new file's permissions (default: a new file's under the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp makes files private; the user's file should not be
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through `atomic_file`: the old file or the new one, never half of one."""
    with atomic_file(path) as f:
        f.write(payload)

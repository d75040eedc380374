"""The book engine needs nothing but Python: its modules import only the standard library.

Checked twice: statically, by reading every import statement of those modules, and for real, by
training the scalar engine in a fresh interpreter where numpy and torch cannot be imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "microgpt"

BOOK_MODULES = [
    "microgpt.autograd", "microgpt.model", "microgpt.optim", "microgpt.tokenizer", "microgpt.data",
    "microgpt.train", "microgpt.sample", "microgpt.config", "microgpt.errors", "microgpt.engines.base",
    "microgpt.engines.scalar",
]
# Importing microgpt.engines.base runs the packages' __init__ files first, so they count too.
PARENT_PACKAGES = ["microgpt", "microgpt.engines"]
ALLOWED_INSIDE = set(BOOK_MODULES) | set(PARENT_PACKAGES)
STDLIB = set(sys.stdlib_module_names)


def source_file(module: str) -> Path:
    parts = module.split(".")
    package_init = SRC.joinpath(*parts, "__init__.py")
    return package_init if package_init.exists() else SRC.joinpath(*parts[:-1], parts[-1] + ".py")


def imported_modules(module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in `module`, nested ones included."""
    path = source_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # Relative: level 1 is this package, each further dot one package up.
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if node.module is None:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # from . import x
            else:
                found.append((node.lineno, base))
    return found


@pytest.mark.parametrize("module", BOOK_MODULES + PARENT_PACKAGES)
def test_book_module_imports_only_the_standard_library(module):
    assert source_file(module).exists(), module
    for line, name in imported_modules(module):
        top = name.split(".")[0]
        if top == "__future__" or top in STDLIB:
            continue
        where = f"{source_file(module).relative_to(SRC)}:{line}"
        assert top == "microgpt", f"{where} imports {name}, which is not in the standard library"
        # Inside the package, only other book modules: never checkpoint I/O, the CLI or a fast engine.
        assert name in ALLOWED_INSIDE, f"{where} imports {name}, which is not a book engine module"


def test_the_scan_reads_the_package_in_src():
    assert PACKAGE.is_dir() and (PACKAGE / "autograd.py").is_file()
    assert not (ROOT / "microgpt").exists()  # the src layout: no second copy at the root to scan instead


def test_the_scan_sees_relative_imports():
    # The scan must resolve "from ..model import gpt" in engines/scalar.py to microgpt.model.
    names = {name for _, name in imported_modules("microgpt.engines.scalar")}
    assert {"microgpt.model", "microgpt.autograd", "microgpt.engines.base", "math", "random"} <= names


SCRIPT = r"""
import json, sys
# None in sys.modules makes "import numpy" raise ImportError, as if it were not installed.
BLOCKED = ("numpy", "torch", "safetensors", "matplotlib")
for name in BLOCKED:
    sys.modules[name] = None
try:
    import numpy  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
before = set(sys.modules)

import microgpt
import {modules}
from microgpt.config import Config
from microgpt.data import names_path, prepare
from microgpt.engines import create_engine
from microgpt.sample import sample
from microgpt.train import train

config = Config(n_layer=1, n_embd=8, n_head=2, block_size=8, num_steps=2, num_samples=2).validate()
data, rng = prepare(config, sys.argv[1])
engine = create_engine("scalar", config, data.tokenizer.vocab_size, rng)
losses = []
steps = train(engine, data, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
samples = [sample(engine, data.tokenizer, rng, config.temperature) for _ in range(config.num_samples)]
names_docs = prepare(config)[0].size  # the packaged dataset is found and checked without numpy too

added = {{name.split(".")[0] for name in set(sys.modules) - before if sys.modules[name] is not None}}
print(json.dumps({{
    "blocked": blocked, "steps": steps, "losses": losses, "samples": samples, "names_docs": names_docs,
    "package": microgpt.__file__, "engine": type(engine).__module__,
    "third_party": sorted(added - set(sys.stdlib_module_names) - {{"microgpt"}}),
}}))
"""


def test_book_engine_trains_without_numpy_or_torch(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("emma\nolivia\nava\nisabella\nsophia\nmia\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    script = SCRIPT.format(modules=", ".join(BOOK_MODULES))
    proc = subprocess.run([sys.executable, "-c", script, str(data)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True
    assert Path(result["package"]).resolve().parent == PACKAGE  # this checkout, not another install
    assert result["engine"] == "microgpt.engines.scalar"
    assert result["steps"] == 2
    assert len(result["losses"]) == 2 and all(0 < x < 10 for x in result["losses"])
    assert len(result["samples"]) == 2 and all(set(s) <= set("emmaoliviaisabellasophia") for s in result["samples"])
    assert result["names_docs"] == 32033
    assert result["third_party"] == []

"""A newcomer's first minutes, for real: a fresh clone with nothing beside it, a fresh virtual
environment (no system site-packages), the install the README gives, then the fast tests; and the
wheel, installed without the source tree, training offline on the packaged names.

These build real virtual environments and install from the package index, so they take a minute or
two; they are marked slow, and CI runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import ROOT, SPEC_SAMPLES, samples_of

pytestmark = pytest.mark.slow

# Any attempt to reach the network through a proxy-aware client fails at once.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


# The fast tests a fresh clone runs: the book engine, the data, the command line, checkpoints and the
# parity suite's quick part; the whole suite runs in CI's own environment already.
FAST_TESTS = ["tests/test_stdlib_only.py", "tests/test_data.py", "tests/test_tokenizer.py", "tests/test_autograd.py",
              "tests/test_engine_base.py", "tests/test_cli.py", "tests/test_checkpoint.py", "tests/test_parity.py"]


def fresh_venv(where: Path) -> Path:
    """A new virtual environment without system site-packages; its python."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(where)
    return where / "bin" / "python"


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env(**extra: str) -> dict:
    """This process's environment without what would leak the developer's setup into the new one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CI", "PYTEST_ADDOPTS")}
    return {**env, **extra}


def clone(tmp_path: Path) -> Path:
    """`git clone` of this repository's committed state plus the working tree's changes, in a folder
    with nothing beside it (none of the developers' folders next to the repository)."""
    target = tmp_path / "alone" / "microgpt"
    target.parent.mkdir()
    run(["git", "clone", "-q", "--no-hardlinks", ROOT, target], cwd=tmp_path)
    # The tests must pass on what is being changed, not only on what was committed: copy the
    # tracked files' current contents over the clone.
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    return target


def test_fresh_clone_installs_and_passes_the_fast_tests(tmp_path):
    repo = clone(tmp_path)
    python = fresh_venv(tmp_path / "venv")
    # The README's install, without the PyTorch oracle: the standard-library and NumPy tests must
    # run (and the PyTorch ones skip, saying why) where torch is not installed.
    run([python, "-m", "pip", "install", "-q", "-e", ".", "pytest", "hypothesis"], cwd=repo, env=clean_env())
    proc = run([python, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *FAST_TESTS],
               cwd=repo, env=clean_env(**OFFLINE, MICROGPT_CACHE=str(tmp_path / "c")))
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
    assert "skipped" in proc.stdout  # the PyTorch tests, with their reason
    # Run from the folder that contains the clone, the installed package is the one imported.
    out = run([python, "-m", "microgpt", "--version"], cwd=repo.parent, env=clean_env()).stdout
    assert out.startswith("microgpt ")


def test_the_wheel_trains_offline_without_the_source_tree(tmp_path):
    repo = clone(tmp_path)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, repo], cwd=tmp_path, env=clean_env())
    (wheel,) = dist.glob("microgpt_book-*.whl")
    shutil.rmtree(repo)  # nothing of the source tree is left to import from
    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=clean_env())
    home = tmp_path / "home"
    home.mkdir()
    microgpt = python.parent / "microgpt"
    proc = run([microgpt, "train"], cwd=home, env=clean_env(**OFFLINE, HOME=str(home),
                                                            MICROGPT_CACHE=str(home / "cache")))
    assert "num docs: 32033" in proc.stdout
    assert samples_of(proc.stdout) == SPEC_SAMPLES
    assert not (home / "cache").exists()  # the packaged data needed no download

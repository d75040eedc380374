"""Engines: interchangeable ways of computing the same model, chosen by name.

`scalar` is the book engine (`Value` autograd, standard library only); faster engines register
here by module path, so one is imported only when it is chosen. The registry is the one list of
engines: the command line's choices and the parity tests both come from it.

Exports: `ENGINES`, `create_engine`, `engine_options`, `Engine`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
from typing import Any

from ..config import Config
from ..errors import UserError
from .base import Engine

# name -> (module, class, what to install when its import fails, the options it takes with their defaults)
ENGINES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "numpy": ("microgpt.engines.numpy_engine", "NumpyEngine", 'pip install numpy', {"threads": 0}),
    "scalar": ("microgpt.engines.scalar", "ScalarEngine", "", {}),
    "torch": ("microgpt.engines.torch_engine", "TorchEngine",
              'pip install -e ".[torch]" (in the clone; it pins torch==2.13.0)',
              {"device": "auto", "dtype": "float64", "compile": False, "threads": 0}),
}


def engine_options(args: argparse.Namespace, engine: str, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's options: its defaults, then what a resumed run was started with, then the flags given.

    A flag the engine does not take is refused, naming the engine that does.
    """
    defaults = _spec(engine)[3]
    given = {k: getattr(args, k) for k in ("device", "dtype", "compile", "threads") if hasattr(args, k)}
    for key in given:
        if key not in defaults:
            takes = [name for name, spec in ENGINES.items() if key in spec[3]]
            raise UserError(f"--{key} applies to the {' and '.join(takes)} engine{'s' if len(takes) > 1 else ''} "
                            f"only: add --engine {takes[0]} or drop --{key}")
    if given.get("threads", 0) < 0:
        raise UserError(f"--threads must be 0 (the engine's choice) or more, got {given['threads']}")
    return {**defaults, **{k: v for k, v in (saved or {}).items() if k in defaults}, **given}


def create_engine(name: str, config: Config, vocab_size: int, rng: random.Random, **options: Any) -> Engine:
    """Build engine `name`, drawing its initial weights from `rng`."""
    module_name, class_name, install, _ = _spec(name)
    if name == "numpy":
        _blas_threads(options.pop("threads", 0))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"the {name} engine needs a package that is not installed ({e.name}): {install}") from None
    return getattr(module, class_name)(config, vocab_size, rng, **options)


def _spec(name: str) -> tuple[str, str, str, dict[str, Any]]:
    """The registry's entry of engine `name`, or one line naming the engines there are."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: pick one of {', '.join(ENGINES)}")
    return ENGINES[name]


def _blas_threads(threads: int) -> None:
    """NumPy's BLAS reads its thread count once, when numpy is first imported: set it before."""
    if not threads:
        return
    if "numpy" in sys.modules:
        print(f"note: --threads {threads} is ignored: numpy is already loaded with its own thread count",
              file=sys.stderr)
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)

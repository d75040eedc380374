"""Engines: interchangeable ways of computing the same model, chosen by name.

`scalar` is the book engine (`Value` autograd, standard library only); faster engines register
here by module path, so one is imported only when it is chosen.

Exports: `ENGINES`, `create_engine`, `Engine`.
"""

from __future__ import annotations

import importlib
import random

from ..config import Config
from ..errors import UserError
from .base import Engine

# name -> (module, class, what to install when its import fails)
ENGINES: dict[str, tuple[str, str, str]] = {
    "numpy": ("microgpt.engines.numpy_engine", "NumpyEngine", "pip install numpy"),
    "scalar": ("microgpt.engines.scalar", "ScalarEngine", ""),
    "torch": ("microgpt.engines.torch_engine", "TorchEngine", 'pip install "microgpt[torch]"'),
}


def create_engine(name: str, config: Config, vocab_size: int, rng: random.Random, **options) -> Engine:
    """Build engine `name`, drawing its initial weights from `rng`."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: pick one of {', '.join(ENGINES)}")
    module_name, class_name, install = ENGINES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"the {name} engine needs a package that is not installed ({e.name}): {install}") from None
    return getattr(module, class_name)(config, vocab_size, rng, **options)

"""The command line: `microgpt COMMAND ...`, a thin layer over the package.

The flags of every hyperparameter are generated from the `Config` dataclass, so each default is
declared once. Each command lives in its own module with `configure(parser)` and `main(args)`;
a `UserError` anywhere becomes one line on stderr and exit status 2.

Exports: `main`, `add_config_arguments`, `config_from_args`, `config_overrides`, `data_arguments`,
`step_arguments`, `step_example`, `engine_arguments`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, field_kind, flag_of
from .errors import Interrupted, UserError, WriteFailure

if TYPE_CHECKING:
    import random

    from .data import Dataset

# command -> (module, one-line description); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("microgpt.run", "train a model (the book's loop) and print samples"),
    "sample": ("microgpt.evaluate", "sample documents from a checkpoint"),
    "eval": ("microgpt.evaluate", "mean per-token loss and perplexity of a checkpoint on a dataset"),
    "plot": ("microgpt.plot", "draw the loss curves of a metrics file to a PNG"),
    "compare": ("microgpt.compare", "plot and tabulate several runs' losses side by side"),
    "gradcheck": ("microgpt.gradcheck", "check an engine's gradients against finite differences"),
    "graph": ("microgpt.graph", "show the computation graph one training step builds"),
    "explain": ("microgpt.explain", "write one offline HTML page that shows a training run from the inside"),
    "trace": ("microgpt.trace", "one prediction, inside: p(target), loss and top-5 at every position"),
}

GROUP_TITLES = {
    "model": "model (chapter 4)",
    "training": "training (chapter 5)",
    "chapter7": "what the book's loop omits (chapter 7)",
    "beyond": "beyond the book: text streams and nanoGPT's options (all off by default)",
    "sampling": "sampling (chapter 6)",
}


def add_config_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...] = tuple(GROUP_TITLES)) -> None:
    """One flag per Config field of the given groups. Defaults are SUPPRESSed, so
    `config_from_args` can tell what the user actually typed (a resumed run needs that)."""
    defaults = Config()
    sections = {g: parser.add_argument_group(GROUP_TITLES[g]) for g in groups}
    for f in dataclasses.fields(Config):
        group = f.metadata.get("group", "training")
        if group not in sections:
            continue
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "")
        kind = field_kind(f)
        if kind == "bool":
            if default:  # a default-on switch gets a --no-... flag
                sections[group].add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                             default=argparse.SUPPRESS, help=help_text)
            else:
                sections[group].add_argument(flag_of(f.name), dest=f.name, action="store_true",
                                             default=argparse.SUPPRESS, help=help_text)
            continue
        choices = f.metadata.get("choices")
        metavar = None if choices else {"int": "N", "float": "X"}.get(kind, "VALUE")
        parse = {"int": int, "float": float, "str": str}[kind]
        sections[group].add_argument(flag_of(f.name), dest=f.name, type=parse, default=argparse.SUPPRESS,
                                     choices=choices, metavar=metavar,
                                     help=help_text if default is None else f"{help_text} (default: {default})")


def data_arguments(group: argparse._ArgumentGroup) -> None:
    """--data and --sha256, as every command that reads training data takes them."""
    group.add_argument("--data", metavar="FILE|URL", help="the training text: a file, or an http(s) URL downloaded "
                       "once into the cache ($MICROGPT_CACHE, else $XDG_CACHE_HOME/microgpt or ~/.cache/microgpt) "
                       "(default: the names "
                       "dataset shipped with microgpt)")
    group.add_argument("--sha256", metavar="HEX", help="refuse --data unless its sha256 is HEX (a download's "
                       "sha256 is printed the first time)")


def step_arguments(group: argparse._ArgumentGroup) -> None:
    """--data, --sha256, --doc and --seed: the one training step that gradcheck and graph look at."""
    data_arguments(group)
    group.add_argument("--doc", metavar="TEXT", help="the document of the training step (default: the first "
                       "document of the shuffled data, training's step 1); it must use the data's characters")
    group.add_argument("--seed", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="seed of the shuffle and the initial weights (default: 42)")


def step_example(args: argparse.Namespace, config: Config) -> tuple[Dataset, random.Random, str, list[int]]:
    """What step_arguments name: the data and the generator as training starts them (shuffled with
    the one generator), the step's document and its tokens."""
    from .data import prepare

    data, rng = prepare(config, args.data, sha256=args.sha256)
    doc = data.docs[0] if args.doc is None else args.doc
    return data, rng, doc, data.tokenizer.example(doc)


def engine_arguments(group: argparse._ArgumentGroup, parser: argparse.ArgumentParser,
                     default: str | None = None) -> None:
    """--engine, and the engines' own options (--device, --dtype, --compile, --threads)."""
    from .engines import ENGINES

    group.add_argument("--engine", choices=list(ENGINES), default=default or argparse.SUPPRESS,
                       help="numpy: fast, float64 (default); scalar: the same numbers, one scalar at a time "
                       "(the book engine); torch: PyTorch, batches, GPUs, torchrun")
    torch = parser.add_argument_group("engine options")
    torch.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=argparse.SUPPRESS,
                       help="where the torch engine runs (default: auto = cuda, else mps, else cpu)")
    torch.add_argument("--dtype", choices=("float64", "float32", "bfloat16"), default=argparse.SUPPRESS,
                       help="the torch engine's precision (default: float64)")
    torch.add_argument("--compile", action="store_true", default=argparse.SUPPRESS,
                       help="torch.compile the torch engine's model")
    torch.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="CPU threads of the numpy and torch engines (default: 1 for small models, else the "
                       "library's choice). On a busy machine more threads can be many times slower than one: "
                       "PyTorch on two threads ran 7-30x slower than on one beside another busy process")


def config_overrides(args: argparse.Namespace) -> dict:
    """The Config fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """`base` (default: the book's Config) with the user's flags applied, validated."""
    return dataclasses.replace(base or Config(), **config_overrides(args)).validate()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors also exit 2, in one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `command`, only that one gets its flags (and its module
    imported), which keeps a command's start fast."""
    parser = _Parser(prog="microgpt", description="The smallest complete GPT, as the book teaches it: "
                     "train on one document per line, then sample.",
                     epilog="Run `microgpt COMMAND --help` for the flags of a command.")
    parser.add_argument("--version", action="version", version=f"microgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        if command is None or name == command:
            importlib.import_module(module).configure(cmd, name)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    previous = _stop_on_signals()
    try:
        return importlib.import_module(args._module).main(args) or 0
    except UserError as e:
        print(f"microgpt: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `microgpt sample | head` is fine
        _quiet_stdout()
        return 0
    except OSError as e:  # a read or write the system refused on the way (stdout on a full disk, ...): one line
        where = f" on {e.filename}" if e.filename else ""
        print(f"microgpt: error: input/output failed{where} ({e.strerror or e}): check the free disk space and "
              "the paths given", file=sys.stderr)
        _quiet_stdout()
        return WriteFailure.exit_code
    except (Interrupted, KeyboardInterrupt) as e:
        print("microgpt: interrupted", file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_signals() -> dict:
    """Every command stops on Ctrl-C and SIGTERM with exit 128 + the signal (130, 143), even where the
    shell started it with SIGINT ignored (a background job of a script). Returns the previous handlers."""
    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum)
    try:
        return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        return {}


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


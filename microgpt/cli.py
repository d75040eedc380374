"""The command line: `microgpt COMMAND ...`, a thin layer over the package.

The flags of every hyperparameter are generated from the `Config` dataclass, so each default is
declared once. Each command lives in its own module with `configure(parser)` and `main(args)`;
a `UserError` anywhere becomes one line on stderr and exit status 2.

Exports: `main`, `add_config_arguments`, `config_from_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

from . import __version__
from .config import Config, flag_of
from .errors import UserError

# command -> (module, one-line description); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("microgpt.run", "train a model (the book's loop) and print samples"),
    "sample": ("microgpt.evaluate", "sample documents from a checkpoint"),
    "eval": ("microgpt.evaluate", "mean per-token loss and perplexity of a checkpoint on a dataset"),
    "plot": ("microgpt.plot", "draw the loss curves of a metrics file to a PNG"),
    "compare": ("microgpt.compare", "plot and tabulate several runs' losses side by side"),
    "gradcheck": ("microgpt.gradcheck", "check an engine's gradients against finite differences"),
    "graph": ("microgpt.graph", "show the computation graph one training step builds"),
}

GROUP_TITLES = {
    "model": "model (chapter 4)",
    "training": "training (chapter 5)",
    "chapter7": "what the book's loop omits (chapter 7)",
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
        if f.type in ("bool", bool):
            if default:  # a default-on switch gets a --no-... flag
                sections[group].add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                             default=argparse.SUPPRESS, help=help_text)
            else:
                sections[group].add_argument(flag_of(f.name), dest=f.name, action="store_true",
                                             default=argparse.SUPPRESS, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        choices = f.metadata.get("choices")
        metavar = None if choices else {"int": "N", "float": "X"}.get(kind.__name__, "VALUE")
        sections[group].add_argument(flag_of(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                                     choices=choices, metavar=metavar, help=f"{help_text} (default: {default})")


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
    try:
        return importlib.import_module(args._module).main(args) or 0
    except UserError as e:
        print(f"microgpt: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `microgpt sample | head` is fine
        return 0
    except KeyboardInterrupt:
        print("microgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

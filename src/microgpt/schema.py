"""Declared schemas for what the tool reads from files: nothing read is used before it is checked.

A schema is a function `check(value, where)` that returns the value (possibly normalised, e.g.
an integer where a float is declared) or raises `SchemaError` naming the field, what was expected
and what was found. They compose: `record({...})` checks a JSON object field by field,
`list_of(...)` every element. Checkpoint files and metrics files declare theirs with these, so
each format's rules are written once and every command that reads the format uses them.
Standard library only.

Exports: `SchemaError`, `integer`, `number`, `string`, `boolean`, `one_of`, `list_of`, `optional`,
`record`, `mapping`, `show`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str], Any]


class SchemaError(ValueError):
    """A value that does not fit its declared schema: `field` (a path such as config.n_embd), `expected`, `got`."""

    def __init__(self, field: str, expected: str, got: Any) -> None:
        super().__init__(f"{field or 'the top level'}: expected {expected}, found {show(got)}")
        self.field, self.expected, self.got = field, expected, got


def show(value: Any, limit: int = 40) -> str:
    """A short description of a found value, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An int (not a bool) in [lo, hi]."""
    expected = "an integer" + _range(lo, hi)

    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
                hi is not None and value > hi):
            raise SchemaError(where, expected, value)
        return value
    return check


def number(lo: float | None = None, hi: float | None = None, finite: bool = True) -> Check:
    """An int or float (not a bool), finite unless `finite` is False, in [lo, hi]; returned as float."""
    expected = ("a finite number" if finite else "a number") + _range(lo, hi)

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(where, expected, value)
        value = float(value)
        if (finite and not math.isfinite(value)) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SchemaError(where, expected, value)
        return value
    return check


def string(max_len: int = 10_000, pattern: str | None = None, expected: str | None = None) -> Check:
    """A str of at most max_len characters, matching `pattern` in full if given."""
    compiled = re.compile(pattern) if pattern else None
    description = expected or (f"a string matching {pattern}" if pattern else "a string")

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or len(value) > max_len or (compiled and not compiled.fullmatch(value)):
            raise SchemaError(where, description, value)
        return value
    return check


def boolean() -> Check:
    def check(value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise SchemaError(where, "true or false", value)
        return value
    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise SchemaError(where, "one of " + ", ".join(map(repr, choices)), value)
        return value
    return check


def list_of(item: Check, min_len: int = 0, max_len: int = 10_000_000) -> Check:
    def check(value: Any, where: str) -> list:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            raise SchemaError(where, f"a list of {min_len} to {max_len} items", value)
        return [item(v, _join(where, i)) for i, v in enumerate(value)]
    return check


def optional(inner: Check) -> Check:
    """None, or what `inner` accepts."""
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)
    return check


def mapping(value_check: Check, key_pattern: str = r".{1,200}", max_len: int = 100_000) -> Check:
    """A JSON object with any keys matching `key_pattern`, every value checked by `value_check`."""
    compiled = re.compile(key_pattern, re.S)

    def check(value: Any, where: str) -> dict:
        if not isinstance(value, dict) or len(value) > max_len:
            raise SchemaError(where, "an object", value)
        out = {}
        for key, v in value.items():
            if not compiled.fullmatch(key):
                raise SchemaError(_join(where, key), f"a key matching {key_pattern}", key)
            out[key] = value_check(v, _join(where, key))
        return out
    return check


def record(fields: dict[str, Check], required: tuple[str, ...] = (), extra: bool = True) -> Check:
    """A JSON object: the `required` keys present, every known key checked, unknown keys kept (or refused)."""
    def check(value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise SchemaError(where, "an object", value)
        for key in required:
            if key not in value:
                raise SchemaError(_join(where, key), "to be present", "nothing")
        out = {}
        for key, v in value.items():
            if key in fields:
                out[key] = fields[key](v, _join(where, key))
            elif not extra:
                raise SchemaError(_join(where, key), "no such field (known: " + ", ".join(fields) + ")", v)
            else:
                out[key] = v
        return out
    return check


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}"
    if hi is not None:
        return f" of at most {hi:g}"
    return ""

"""Chapter 2: the character tokenizer and the BOS token.

Every distinct character of the documents gets an id (its index in the sorted set); one more
id, BOS, marks both the beginning and the end of a document.

Exports: `Tokenizer`, `TokenizerError`.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import UserError


class TokenizerError(UserError, ValueError):
    """Text or ids that the vocabulary cannot represent."""


class Tokenizer:
    """Characters <-> ids, with BOS = len(chars) as the extra token."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: list[str] = sorted(set(chars))
        self.BOS: int = len(self.chars)
        self.vocab_size: int = len(self.chars) + 1
        self._ids = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_docs(cls, docs: Iterable[str]) -> Tokenizer:
        """The vocabulary is the sorted set of all characters over all documents."""
        return cls("".join(docs))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self._ids})
            what = f"character {unknown[0]!r} is" if len(unknown) == 1 else f"characters {''.join(unknown)!r} are"
            raise TokenizerError(
                f"{what} not in the vocabulary "
                f"({''.join(self.chars)!r}): use only those characters") from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.BOS):
                raise TokenizerError(f"id {i!r} is not a character of this vocabulary (ids 0..{self.BOS - 1}; "
                                     f"{self.BOS} is BOS)")
            out.append(self.chars[i])
        return "".join(out)

    def example(self, doc: str) -> list[int]:
        """5.2: a training example is the document wrapped in BOS on both sides."""
        return [self.BOS] + self.encode(doc) + [self.BOS]

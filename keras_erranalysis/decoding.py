"""Turn token ids and class ids back into text.

A :class:`Vocabulary` wraps whatever the user has: a list of tokens, a ``{id: token}`` or
``{token: id}`` mapping, a Keras ``TextVectorization`` / ``StringLookup`` layer, a
keras-hub tokenizer, or a callable from a sequence of ids to a string.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DecodeFn = Callable[[Sequence[int]], str]


class Vocabulary:
    """Maps ids to tokens and joins them into text.

    Args:
        tokens: The token of each id, in id order. Empty strings are treated as padding
            and left out of decoded text.
        sep: What to put between tokens when joining (``""`` for characters).
        fn: Instead of ``tokens``, a callable from a list of ids to a string.

    Example:
        >>> from keras_erranalysis import Vocabulary
        >>> Vocabulary(["", "c", "a", "t"], sep="").decode([1, 2, 3, 0])
        'cat'
    """

    def __init__(
        self,
        tokens: Sequence[str] | None = None,
        *,
        sep: str = " ",
        fn: DecodeFn | None = None,
    ) -> None:
        if (tokens is None) == (fn is None):
            raise ValueError("Vocabulary needs exactly one of `tokens` or `fn`.")
        self.tokens = None if tokens is None else [_as_text(t) for t in tokens]
        self.sep = sep
        self.fn = fn

    @classmethod
    def from_any(cls, obj: Any, *, sep: str | None = None) -> Vocabulary | None:
        """Builds a vocabulary from a list, a mapping, a Keras lookup layer or a callable.

        Args:
            obj: The user's vocabulary (a list, a mapping, a Keras lookup layer, a keras-hub
                tokenizer, a callable), or None.
            sep: Joiner override; by default a space (a Vocabulary keeps its own).

        Returns:
            A Vocabulary, or None when ``obj`` is None.

        Raises:
            TypeError: When ``obj`` is none of the accepted kinds.

        Example:
            >>> from keras_erranalysis import Vocabulary
            >>> Vocabulary.from_any({"": 0, "hello": 1, "world": 2}).decode([1, 2, 0])
            'hello world'
            >>> Vocabulary.from_any(["", "a", "b"]).tokens
            ['', 'a', 'b']
            >>> Vocabulary.from_any(lambda ids: "-".join(map(str, ids))).decode([3, 4, -1])
            '3-4'
        """
        if obj is None:
            return None
        if isinstance(obj, Vocabulary):
            if sep is not None and sep != obj.sep:
                return cls(obj.tokens, sep=sep, fn=obj.fn)
            return obj
        if callable(getattr(obj, "detokenize", None)) and callable(
            getattr(obj, "vocabulary_size", None)
        ):  # a keras-hub tokenizer: each id's own text, joined with nothing
            return cls(tokenizer_tokens(obj), sep="" if sep is None else sep)
        joiner = " " if sep is None else sep
        if hasattr(obj, "get_vocabulary"):  # TextVectorization, StringLookup, IntegerLookup
            return cls([str(t) for t in obj.get_vocabulary()], sep=joiner)
        if isinstance(obj, Mapping):
            return cls(_tokens_from_mapping(obj), sep=joiner)
        if isinstance(obj, (str, bytes)):
            raise TypeError(
                "A vocabulary must be a list of tokens, not a single string; "
                "for characters pass list(alphabet) and sep=''."
            )
        if isinstance(obj, (Sequence, np.ndarray)):
            return cls([_as_text(t) for t in obj], sep=joiner)
        if callable(obj):
            return cls(fn=obj, sep=joiner)
        raise TypeError(
            f"Cannot use {type(obj).__name__} as a vocabulary: pass a list of tokens, a "
            "{id: token} dict, a TextVectorization/StringLookup layer, or a callable."
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Vocabulary | None:
        """Rebuilds a vocabulary written by :meth:`to_json`."""
        if not data:
            return None
        return cls(list(data["tokens"]), sep=str(data.get("sep", " ")))

    def to_json(self) -> dict[str, Any] | None:
        """Returns a JSON-ready dict, or None for a callable (which cannot be stored)."""
        if self.tokens is None:
            return None
        return {"tokens": self.tokens, "sep": self.sep}

    def token(self, index: int) -> str:
        """Returns the token of one id (``<id>`` when the id is outside the vocabulary).

        A negative id (-1: no prediction, e.g. a row of NaN logits) is never passed to a
        decoding function.

        Example:
            >>> from keras_erranalysis import Vocabulary
            >>> vocab = Vocabulary(["", "yes", "no"])
            >>> vocab.token(1), vocab.token(7), vocab.token(-1)
            ('yes', '<7>', '<-1>')
        """
        index = int(index)
        if self.tokens is None:
            return f"<{index}>" if index < 0 else printable_text(self.fn([index]))  # type: ignore[misc]
        if 0 <= index < len(self.tokens):
            return printable_text(self.tokens[index])
        return f"<{index}>"

    def decode(self, ids: Sequence[int] | np.ndarray, mask: np.ndarray | None = None) -> str:
        """Joins the tokens of ``ids`` (only where ``mask`` is true) into text.

        Padding tokens (empty strings) are dropped; a decoding function never gets negative
        ids (-1: no prediction), which are left out of its text.

        Example:
            >>> from keras_erranalysis import Vocabulary
            >>> import numpy as np
            >>> vocab = Vocabulary(["", "c", "a", "t"], sep="")
            >>> vocab.decode(np.array([1, 2, 3, 0, 0]))
            'cat'
            >>> vocab.decode([1, 2, 3], mask=[True, False, True])
            'ct'
        """
        ids_array = np.asarray(ids).reshape(-1)
        if mask is not None:
            ids_array = ids_array[np.asarray(mask, dtype=bool).reshape(-1)]
        if self.tokens is None:
            return printable_text(self.fn([int(i) for i in ids_array if i >= 0]))  # type: ignore[misc]
        words = (self.token(i) for i in ids_array)
        return self.sep.join(w for w in words if w != "")


def tokenizer_tokens(tokenizer: Any) -> list[str]:
    """The text of each id of a keras-hub tokenizer (special tokens: ``""``, as padding).

    Each byte-level BPE id is detokenized on its own, so a piece keeps its leading space
    (``" cat"``); a WordPiece continuation (``"##ing"``) loses its marker and other pieces
    get a space; a SentencePiece ``"▁"`` becomes a space. The pieces joined with ``""``
    then give the text the tokenizer gives;
    special tokens (start, end, padding) are left out of decoded text, as keras-hub's
    ``generate()`` leaves them out. A character split over several byte-level pieces shows
    as U+FFFD in each.
    """
    size = int(tokenizer.vocabulary_size())
    special = {int(i) for i in getattr(tokenizer, "special_token_ids", None) or ()}
    suffix = getattr(tokenizer, "suffix_indicator", None)
    if suffix or hasattr(tokenizer, "proto"):  # WordPiece "##ing", SentencePiece "▁the"
        pieces = [_as_text(t) for t in tokenizer.get_vocabulary()]
        if suffix:
            texts = [p[len(suffix) :] if p.startswith(suffix) else " " + p for p in pieces]
        else:
            texts = [p.replace("\u2581", " ") for p in pieces]
    else:  # byte-level BPE: each id's bytes, its leading space kept (" cat")
        found = tokenizer.detokenize([[i] for i in range(size)])
        texts = np.asarray(found.numpy() if hasattr(found, "numpy") else found).reshape(-1)
    return ["" if i in special else _as_text(t) for i, t in enumerate(texts)]


def _as_text(token: Any) -> str:
    if isinstance(token, bytes):
        return token.decode("utf-8", errors="replace")
    # Kept as given, so a name with surrogate escapes (os.fsdecode of a non-UTF-8 file name)
    # comes back from run.json as the same string; only a high+low surrogate pair becomes
    # the one character it encodes, as JSON reads it back.
    return canonical_text(str(token))


def canonical_text(text: str) -> str:
    r"""``text`` with each UTF-16 surrogate pair joined into its character; lone ones kept.

    Example:
        >>> canonical_text("\ud83d\ude00") == "\U0001f600"
        True
        >>> canonical_text("bad\udcff") == "bad\udcff"
        True
    """
    if not _has_surrogate(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def printable_text(text: Any) -> str:
    r"""``text`` as valid UTF-8: a lone surrogate is shown as ``\udcff`` (visible, escaped).

    Tables, CSV files and pandas' Arrow strings cannot hold lone surrogates (the text
    ``os.fsdecode`` makes of a file name that is not UTF-8); decoded text is shown this way
    while a :class:`Vocabulary` keeps the exact tokens.

    Example:
        >>> print(printable_text("bad\udcff"))
        bad\udcff
    """
    text = str(text)
    if not _has_surrogate(text):
        return text
    return canonical_text(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _tokens_from_mapping(mapping: Mapping[Any, Any]) -> list[str]:
    items = list(mapping.items())
    if not items:
        return []
    if all(isinstance(k, (int, np.integer)) for k, _ in items):
        id_to_token = {int(k): _as_text(v) for k, v in items}
    elif all(isinstance(v, (int, np.integer)) for _, v in items):
        id_to_token = {int(v): _as_text(k) for k, v in items}
    else:
        raise TypeError("A vocabulary dict must map ids to tokens or tokens to ids.")
    size = max(id_to_token) + 1
    return [id_to_token.get(i, f"<{i}>") for i in range(size)]

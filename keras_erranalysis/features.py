"""Why examples fail: per-example features, statistical tests, FDR control and slices.

Everything here is plain numpy / pandas / scipy (no Keras). The pipeline is

1. :func:`extract_features` turns texts, tokens or token ids into a numeric table (lengths,
   rare-token share, character shares, ...) and a sparse 0/1 matrix (presence of each word and
   n-gram above a minimum support, the label, user flags). Extract once, reuse every epoch.
2. :func:`compare_features` tests every feature between the wrong and the right examples
   (Welch's t or Mann-Whitney U for numbers; chi-squared, or Fisher's exact test when an
   expected count is below 5, for flags), corrects with Benjamini-Hochberg and returns a
   table, strongest first, with a sentence per feature.
3. :func:`error_rate_by_bins` and :func:`find_slices` show where the errors concentrate;
   :func:`slice_examples` returns the examples of a slice.

Example:
    >>> import numpy as np
    >>> texts = ["a short one", "a much much longer text with many words"] * 20
    >>> correct = np.array([True, False] * 20)
    >>> table = compare_features(correct, texts, pos=False)
    >>> table.iloc[0]["feature"] in {"n_tokens", "n_chars"}
    True
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats as st

__all__ = [
    "Example",
    "Features",
    "compare_features",
    "error_rate_by_bins",
    "extract_features",
    "features_summary",
    "find_slices",
    "slice_examples",
]

# Same pattern as nltk's wordpunct_tokenize: runs of word characters or of punctuation.
_WORD_RE = re.compile(r"\w+|[^\w\s]+")

# Columns of the table returned by compare_features, in order.
COMPARE_COLUMNS = [
    "feature",
    "kind",
    "test",
    "support",
    "n_wrong",
    "wrong_value",
    "right_value",
    "difference",
    "ratio",
    "effect",
    "p_value",
    "p_adjusted",
    "significant",
    "summary",
]

# Coarse groups of Penn Treebank tags, for the optional part-of-speech shares.
_POS_GROUPS = {
    "noun": ("NN",),
    "verb": ("VB", "MD"),
    "adj": ("JJ",),
    "adv": ("RB", "WRB"),
    "pron": ("PRP", "WP"),
    "num": ("CD",),
}

# How to phrase "wrong examples are 2.4x <word>" for the built-in numeric features.
_PHRASES = {
    "n_tokens": ("longer", "shorter", " tokens"),
    "n_chars": ("longer", "shorter", " characters"),
}


class Example(NamedTuple):
    """One example as given to user extractors.

    Attributes:
        index: Position of the example (0..N-1).
        example_id: Its stable id.
        text: The text, or None when only tokens / token ids were given.
        tokens: Its tokens (strings) after tokenisation and lower-casing.
        token_ids: Its token ids without padding, or None.
        label: Its label, or None.
    """

    index: int
    example_id: int
    text: str | None
    tokens: list[str]
    token_ids: np.ndarray | None
    label: Any


class Features(NamedTuple):
    """Per-example features, as returned by :func:`extract_features`.

    Attributes:
        numeric: One row per example (index = example id), one float column per numeric
            feature (``n_tokens``, ``n_chars``, ``rare_share``, ...).
        binary: CSR matrix (N, F) of 0/1 int32: presence of each token / n-gram, label
            indicators and user flags.
        binary_names: The F column names (an n-gram's tokens joined by a space; ``label=3``).
        binary_kinds: The F column kinds: ``"token"``, ``"ngram"``, ``"label"`` or ``"user"``.
    """

    numeric: pd.DataFrame
    binary: sp.csr_matrix
    binary_names: list[str]
    binary_kinds: list[str]

    @property
    def example_ids(self) -> np.ndarray:
        """The example ids, in row order."""
        return self.numeric.index.to_numpy()


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _pos_tagger() -> Callable[[list[list[str]]], list[list[tuple[str, str]]]] | None:
    """Return nltk's sentence tagger if its model is installed, else None (checked once)."""
    try:
        import nltk

        nltk.pos_tag(["a", "test"])
        return nltk.pos_tag_sents
    except LookupError:
        return None
    except Exception:  # noqa: BLE001 - any other failure of the tagger means "not available"
        return None


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort + diff: several times faster than np.unique in numpy 2.4)."""
    ordered = np.sort(values, kind="stable" if values.dtype.kind == "O" else None)
    if len(ordered) == 0:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _tokenizer_fn(tokenizer: str | Callable[[str], list[str]] | None) -> Callable:
    if tokenizer is None or tokenizer == "word":
        return _WORD_RE.findall
    if tokenizer == "char":
        return list
    if callable(tokenizer):
        return tokenizer
    raise ValueError(
        f"tokenizer={tokenizer!r} is not supported: pass 'word', 'char' or a callable "
        "str -> list[str]."
    )


def _strip_ids(row: np.ndarray, pad_id: int | None) -> np.ndarray:
    row = np.asarray(row).ravel()
    return row[row != pad_id] if pad_id is not None else row


def _char_shares(strings: list[str]) -> dict[str, np.ndarray]:
    """Digit / punctuation / upper-case / non-ASCII shares per string, vectorised."""
    n_docs = len(strings)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=n_docs)
    joined = "".join(strings)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    doc = np.repeat(np.arange(n_docs), lengths)
    # classify each distinct code point once, then gather per character
    present = np.flatnonzero(np.bincount(codes, minlength=128)) if len(codes) else np.zeros(0, int)
    size = int(present.max()) + 1 if len(present) else 128
    chars = [chr(c) for c in present.tolist()]

    def table(pred: Callable[[str], bool]) -> np.ndarray:
        out = np.zeros(size, dtype=bool)
        out[present] = [pred(c) for c in chars]
        return out[codes]

    is_space = table(str.isspace)
    is_digit = table(str.isdigit)
    is_alpha = table(str.isalpha)
    is_upper = table(str.isupper)
    is_punct = table(lambda c: unicodedata.category(c)[0] in "PS")
    is_nonascii = codes > 127

    def per_doc(flags: np.ndarray) -> np.ndarray:
        return np.bincount(doc, weights=flags, minlength=n_docs)

    visible = per_doc(~is_space)
    letters = per_doc(is_alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "digit_share": per_doc(is_digit) / visible,
            "punct_share": per_doc(is_punct) / visible,
            "upper_share": per_doc(is_upper) / letters,
            "nonascii_share": per_doc(is_nonascii) / visible,
        }


def _ngram_columns(
    unit_ids: np.ndarray,
    doc: np.ndarray,
    n_docs: int,
    unit_names: np.ndarray,
    ngram_range: tuple[int, int],
    min_support: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str], list[np.ndarray]]:
    """Document-presence columns of all n-grams with support >= min_support.

    Tokens of all documents are concatenated in ``unit_ids`` (integer codes), ``doc`` gives
    each token's document. An n-gram at position i is the (n-1)-gram at i followed by the
    token at i+n-1, provided both ends are in the same document, so each level is one
    vectorised factorisation of an int64 key.
    """
    n_min, n_max = ngram_range
    total = len(unit_ids)
    vocab_size = max(len(unit_names), 1)
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    names_out: list[str] = []
    kinds_out: list[str] = []
    support_out: list[np.ndarray] = []
    n_cols = 0
    prev = unit_ids.astype(np.int64)  # code of the (n-1)-gram starting at each position
    for n in range(1, n_max + 1):
        if n == 1:
            codes_at = prev
            n_grams = vocab_size
        else:
            m = total - n + 1
            if m <= 0:
                break
            cand = prev[:m]
            valid = (cand >= 0) & (doc[:m] == doc[n - 1 :])
            key = cand[valid] * vocab_size + unit_ids[n - 1 :][valid]
            codes, _ = pd.factorize(key)
            codes_at = np.full(m, -1, dtype=np.int64)
            codes_at[valid] = codes
            n_grams = int(codes.max()) + 1 if len(codes) else 0
        prev = codes_at
        if n < n_min or n_grams == 0:
            continue
        pos = np.flatnonzero(codes_at >= 0)
        codes = codes_at[pos]
        # presence per document: unique (doc, gram) pairs
        pair = _unique(doc[pos] * n_grams + codes)
        pair_doc = pair // n_grams
        pair_gram = pair % n_grams
        support = np.bincount(pair_gram, minlength=n_grams)
        keep = np.flatnonzero((support >= min_support) & (support < n_docs))
        if len(keep) == 0:
            continue
        # order: most frequent first, then first appearance
        keep = keep[np.argsort(-support[keep], kind="stable")]
        new_col = np.full(n_grams, -1, dtype=np.int64)
        new_col[keep] = np.arange(len(keep)) + n_cols
        sel = new_col[pair_gram] >= 0
        rows_out.append(pair_doc[sel])
        cols_out.append(new_col[pair_gram[sel]])
        support_out.append(support[keep])
        # names from the first occurrence of each kept n-gram
        first = np.empty(n_grams, dtype=np.int64)
        first[codes[::-1]] = pos[::-1]
        starts = first[keep]
        parts = unit_names[unit_ids[starts[:, None] + np.arange(n)]]
        names_out.extend(" ".join(p) for p in parts.tolist())
        kinds_out.extend(["token" if n == 1 else "ngram"] * len(keep))
        n_cols += len(keep)
    return rows_out, cols_out, names_out, kinds_out, support_out


def extract_features(
    texts: Sequence[str] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    *,
    token_ids: np.ndarray | Sequence[Sequence[int]] | None = None,
    labels: np.ndarray | Sequence[Any] | None = None,
    vocab: Sequence[str] | None = None,
    vocab_counts: Mapping[Any, int] | None = None,
    example_ids: np.ndarray | None = None,
    ngram_range: tuple[int, int] = (1, 3),
    min_support: int = 5,
    rare_count: int = 5,
    extractors: Iterable[Callable[[Example], Mapping[str, float | bool]]] = (),
    pos: bool = True,
    tokenizer: str | Callable[[str], list[str]] | None = None,
    lowercase: bool = True,
    pad_id: int | None = 0,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
) -> Features:
    r"""Per-example numeric features and sparse binary features, with no downloaded data.

    Give one of ``texts`` (tokenised offline with the ``wordpunct`` regex ``\w+|[^\w\s]+``,
    or ``tokenizer="char"`` / any callable), ``tokens`` (pre-tokenised) or ``token_ids``
    (a padded (N, T) integer array or ragged lists; ``vocab`` maps ids to strings).

    Numeric columns: ``n_tokens``, ``n_chars`` (of the text; of the tokens' characters when no
    text is given), ``rare_share`` (tokens seen fewer than ``rare_count`` times in training),
    ``oov_share`` (tokens never seen; only when ``vocab_counts`` is given, otherwise counts
    come from the given examples themselves), ``digit_share``, ``punct_share``,
    ``nonascii_share`` (of non-space characters), ``upper_share`` (of letters), part-of-speech
    shares ``pos_noun`` ... when an nltk tagger is installed, and numbers from ``extractors``.

    Binary columns: presence of every token and n-gram in ``ngram_range`` found in at least
    ``min_support`` examples (and not in all), ``label=<name>`` indicators for 1-D labels,
    and booleans from ``extractors``.

    Args:
        texts: N strings.
        tokens: N token lists (used instead of tokenising ``texts``).
        token_ids: (N, T) ids padded with ``pad_id``, or N id sequences.
        labels: Optional (N,) labels, turned into ``label=...`` indicators.
        vocab: id -> token string, to name features built from ``token_ids``.
        vocab_counts: Training-set token frequencies (token string or id -> count).
        example_ids: (N,) ids for the rows (default 0..N-1).
        ngram_range: Smallest and largest n of the presence features.
        min_support: Minimum number of examples containing a token / n-gram.
        rare_count: A token is rare when its training count is below this.
        extractors: Callables ``Example -> dict`` of numbers (numeric columns) or booleans
            (binary columns).
        pos: Add part-of-speech shares if an nltk tagger works (else one warning).
        tokenizer: ``"word"`` (default), ``"char"`` or a callable ``str -> list[str]``.
        lowercase: Lower-case text before tokenising.
        pad_id: Padding id dropped from ``token_ids`` (None keeps every id).
        label_names: Names for label values in the ``label=`` columns.

    Returns:
        A :class:`Features` tuple ``(numeric, binary, binary_names, binary_kinds)``.

    Raises:
        ValueError: If no input or inputs of different lengths are given.
    """
    if texts is None and tokens is None and token_ids is None:
        raise ValueError(
            "extract_features needs texts, tokens or token_ids: pass at least one of them."
        )
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string: wrap it in a list.")
    if not (1 <= ngram_range[0] <= ngram_range[1]):
        raise ValueError(
            f"ngram_range={ngram_range!r} is not a range of n: use (min_n, max_n) with "
            "1 <= min_n <= max_n, e.g. (1, 3)."
        )
    if min_support < 1:
        raise ValueError(f"min_support={min_support} must be at least 1 example.")
    ids_list: list[np.ndarray] | None = None
    if token_ids is not None:
        ids_list = [_strip_ids(row, pad_id) for row in token_ids]
    sizes = {len(x) for x in (texts, tokens, ids_list) if x is not None}
    if len(sizes) > 1:
        raise ValueError(
            f"texts, tokens and token_ids have different lengths {sorted(sizes)}: "
            "pass the same examples in the same order."
        )
    n_docs = sizes.pop()
    if example_ids is None:
        example_ids = np.arange(n_docs, dtype=np.int64)
    example_ids = np.asarray(example_ids)
    if len(example_ids) != n_docs:
        raise ValueError(
            f"example_ids has {len(example_ids)} entries for {n_docs} examples: give one id "
            "per example."
        )

    # ---- tokens as integer codes (unit_ids) with a name per code
    tokens_given = tokens is not None
    token_lists: list[list[str]] | None = None
    fast = None
    if tokens is not None:
        token_lists = [[str(t) for t in row] for row in tokens]
        if lowercase:
            token_lists = [[t.lower() for t in row] for row in token_lists]
    elif texts is not None:
        if tokenizer is None or tokenizer == "word":
            fast = _word_units(texts, lowercase)
        if fast is None:
            split = _tokenizer_fn(tokenizer)
            token_lists = [split(t.lower() if lowercase else t) for t in texts]

    if fast is not None:
        unit_ids, unit_names, lengths = fast
        unit_keys = list(unit_names)
    elif token_lists is not None:
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=n_docs)
        flat = np.empty(int(lengths.sum()), dtype=object)
        flat[:] = list(itertools.chain.from_iterable(token_lists))
        unit_ids, uniques = pd.factorize(flat)
        unit_names = np.asarray(uniques, dtype=object)
        unit_keys = list(unit_names)
    else:
        assert ids_list is not None
        lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=n_docs)
        flat_ids = np.concatenate(ids_list).astype(np.int64) if n_docs else np.zeros(0, int)
        unit_ids, uniques = pd.factorize(flat_ids)
        unit_keys = [int(u) for u in uniques]
        id_to_token = _vocab_lookup(vocab)
        unit_names = np.asarray([id_to_token(u) for u in unit_keys], dtype=object)
    unit_ids = np.asarray(unit_ids, dtype=np.int64)
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)

    # ---- numeric features
    numeric: dict[str, np.ndarray] = {"n_tokens": lengths.astype(np.float64)}
    if texts is not None:
        char_strings = [str(t) for t in texts]
    elif tokens_given:
        # original case matters for the character shares
        char_strings = ["".join(str(t) for t in row) for row in tokens]  # type: ignore[union-attr]
    else:
        flat_names = unit_names[unit_ids] if len(unit_ids) else np.zeros(0, dtype=object)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        char_strings = ["".join(flat_names[bounds[i] : bounds[i + 1]]) for i in range(n_docs)]
    numeric["n_chars"] = np.fromiter(map(len, char_strings), dtype=np.float64, count=n_docs)

    if vocab_counts is not None:
        unit_counts = np.array(
            [_lookup_count(vocab_counts, k, name) for k, name in zip(unit_keys, unit_names)],
            dtype=np.float64,
        )
    else:
        unit_counts = np.bincount(unit_ids, minlength=len(unit_names)).astype(np.float64)
    token_counts = unit_counts[unit_ids] if len(unit_names) else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        numeric["rare_share"] = (
            np.bincount(doc, weights=token_counts < rare_count, minlength=n_docs) / lengths
        )
        if vocab_counts is not None:
            numeric["oov_share"] = (
                np.bincount(doc, weights=token_counts == 0, minlength=n_docs) / lengths
            )
    numeric.update(_char_shares(char_strings))

    if pos and tokenizer in (None, "word") and (texts is not None or tokens_given):
        tagger = _pos_tagger()
        if tagger is None:
            warnings.warn(
                "part-of-speech features skipped: no nltk tagger model is installed "
                "(nltk.pos_tag raised LookupError); pass pos=False to silence this.",
                stacklevel=2,
            )
        else:
            if tokens_given:
                case_tokens = [[str(t) for t in row] for row in tokens]  # type: ignore[union-attr]
            else:
                case_tokens = [_tokenizer_fn(tokenizer)(t) for t in texts]  # type: ignore[union-attr]
            numeric.update(_pos_shares(tagger(case_tokens), lengths))

    # ---- binary features: n-grams
    rows, cols, names, kinds, _ = _ngram_columns(
        unit_ids, doc, n_docs, unit_names, ngram_range, min_support
    )
    n_cols = len(names)

    def add_dense_flags(flags: np.ndarray, name: str, kind: str) -> None:
        nonlocal n_cols
        where = np.flatnonzero(flags)
        if len(where) == 0 or len(where) == n_docs:
            return
        rows.append(where)
        cols.append(np.full(len(where), n_cols, dtype=np.int64))
        names.append(name)
        kinds.append(kind)
        n_cols += 1

    if labels is not None:
        label_arr = np.asarray(labels)
        if label_arr.ndim == 1 and len(label_arr) == n_docs:
            for value in np.unique(label_arr):
                add_dense_flags(
                    label_arr == value, f"label={_label_name(value, label_names)}", "label"
                )

    # ---- user extractors
    extractors = list(extractors)
    if extractors:
        user_cols: dict[str, list[Any]] = {}
        label_arr = None if labels is None else np.asarray(labels)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        for i in range(n_docs):
            example = Example(
                index=i,
                example_id=int(example_ids[i])
                if np.issubdtype(example_ids.dtype, np.integer)
                else example_ids[i],
                text=None if texts is None else texts[i],
                tokens=list(token_lists[i])
                if token_lists is not None
                else unit_names[unit_ids[bounds[i] : bounds[i + 1]]].tolist(),
                token_ids=None if ids_list is None else ids_list[i],
                label=None if label_arr is None else label_arr[i],
            )
            for fn in extractors:
                for key, value in fn(example).items():
                    user_cols.setdefault(key, [None] * n_docs)[i] = value
        for key, values in user_cols.items():
            if all(isinstance(v, (bool, np.bool_)) for v in values):
                add_dense_flags(np.asarray(values, dtype=bool), key, "user")
            else:
                numeric[key] = np.array(
                    [np.nan if v is None else float(v) for v in values], dtype=np.float64
                )

    if rows:
        row_all = np.concatenate(rows)
        col_all = np.concatenate(cols)
    else:
        row_all = col_all = np.zeros(0, dtype=np.int64)
    binary = sp.csr_matrix(
        (np.ones(len(row_all), dtype=np.int32), (row_all, col_all)), shape=(n_docs, n_cols)
    )
    frame = pd.DataFrame(numeric, index=pd.Index(example_ids, name="example_id"))
    return Features(frame, binary, names, kinds)


def _word_units(
    texts: Sequence[str], lowercase: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Regex-tokenise all texts in one pass: (token codes, code names, tokens per text).

    The texts are joined with an isolated NUL token between them, so there is a single
    ``findall`` over one string instead of one call and one list per text. Returns None if
    a text itself contains NUL (the caller then tokenises text by text).
    """
    n_docs = len(texts)
    if n_docs == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object), np.zeros(0, np.int64)
    sep = "\n\x00\n"
    joined = sep.join(texts)
    if joined.count("\x00") != max(n_docs - 1, 0):
        return None
    if lowercase:
        joined = joined.lower()
    found = _WORD_RE.findall(joined)
    flat = np.empty(len(found), dtype=object)
    flat[:] = found
    codes, uniques = pd.factorize(flat)
    uniques = np.asarray(uniques, dtype=object)
    # (numpy's == would strip the NUL: compare as Python strings)
    hits = [k for k, u in enumerate(uniques.tolist()) if u == "\x00"]
    if len(hits) == 0:
        lengths = np.zeros(n_docs, dtype=np.int64)
        lengths[0] = len(codes)
        return codes.astype(np.int64), uniques, lengths
    sep_code = int(hits[0])
    is_sep = codes == sep_code
    doc = np.cumsum(is_sep)[~is_sep]
    codes = codes[~is_sep].astype(np.int64)
    codes -= codes > sep_code
    lengths = np.bincount(doc, minlength=n_docs).astype(np.int64)
    return codes, np.delete(uniques, sep_code), lengths


def _vocab_lookup(vocab: Any) -> Callable[[int], str]:
    """Map an id to its token string (a list, an {id: token} mapping or a Vocabulary)."""
    if vocab is None:
        return str
    table = getattr(vocab, "tokens", None)
    table = vocab if table is None else table
    if isinstance(table, Mapping):
        return lambda u: str(table.get(u, f"<{u}>"))
    if hasattr(table, "__getitem__") and hasattr(table, "__len__"):
        return lambda u: str(table[u]) if 0 <= u < len(table) else f"<{u}>"
    if callable(vocab):
        return lambda u: str(vocab([u]))
    raise TypeError(
        f"vocab of type {type(vocab).__name__} is not supported: pass a list of tokens, "
        "an {id: token} mapping or a keras_erranalysis Vocabulary."
    )


def _lookup_count(counts: Mapping[Any, int], key: Any, name: str) -> int:
    if key in counts:
        return int(counts[key])
    return int(counts.get(name, 0))


def _label_name(value: Any, label_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if label_names is None:
        return str(value.item() if isinstance(value, np.generic) else value)
    if isinstance(label_names, Mapping):
        return str(label_names.get(value, value))
    try:
        return str(label_names[int(value)])
    except (IndexError, ValueError, TypeError):
        return str(value)


def _pos_shares(tagged: list[list[tuple[str, str]]], lengths: np.ndarray) -> dict[str, np.ndarray]:
    out = {f"pos_{g}": np.zeros(len(tagged)) for g in _POS_GROUPS}
    for i, sent in enumerate(tagged):
        for _, tag in sent:
            for group, prefixes in _POS_GROUPS.items():
                if tag.startswith(prefixes):
                    out[f"pos_{group}"][i] += 1
                    break
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: v / lengths for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def binary_tests(
    n_wrong_with: np.ndarray,
    support: np.ndarray,
    n_wrong: int | np.ndarray,
    n_total: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-values of 2x2 tables (wrong/right x with/without), vectorised.

    Chi-squared with Yates' correction (what ``scipy.stats.chi2_contingency`` computes on a
    2x2 table) in closed form for all tables at once; Fisher's exact test
    (``scipy.stats.fisher_exact``) where an expected count is below 5, once per distinct table.

    Args:
        n_wrong_with: (F,) wrong examples having the feature.
        support: (F,) examples having the feature.
        n_wrong: Number of wrong examples (scalar, or (F,) for tables of different totals).
        n_total: Number of examples (scalar or (F,)).

    Returns:
        ``(p_values, used_fisher)`` arrays of shape (F,).
    """
    a = np.asarray(n_wrong_with, dtype=np.float64)
    s = np.asarray(support, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_total, dtype=np.float64), a.shape)
    w = np.broadcast_to(np.asarray(n_wrong, dtype=np.float64), a.shape)
    r = n - w
    b = s - a
    c = w - a
    d = r - b
    denom = s * (n - s) * w * r
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.maximum(np.abs(a * d - b * c) - n / 2.0, 0.0)
        stat = np.where(denom > 0, n * diff**2 / denom, 0.0)
        expected_min = np.where(n > 0, np.minimum(s, n - s) * np.minimum(w, r) / n, 0.0)
    p = np.where(denom > 0, st.chi2.sf(stat, 1), 1.0)
    fisher = (expected_min < 5) & (denom > 0)
    if fisher.any():
        tables = np.column_stack([a[fisher], s[fisher], w[fisher], n[fisher]]).astype(np.int64)
        uniq, inverse = np.unique(tables, axis=0, return_inverse=True)
        p_unique = np.empty(len(uniq))
        for k, (a_k, s_k, w_k, n_k) in enumerate(uniq.tolist()):
            table = [[a_k, w_k - a_k], [s_k - a_k, n_k - w_k - (s_k - a_k)]]
            p_unique[k] = st.fisher_exact(table).pvalue
        p[fisher] = p_unique[inverse.ravel()]
    return p, fisher


def _cohens_d(w: np.ndarray, r: np.ndarray) -> float:
    nw, nr = len(w), len(r)
    var = ((nw - 1) * w.var(ddof=1) + (nr - 1) * r.var(ddof=1)) / max(nw + nr - 2, 1)
    diff = w.mean() - r.mean()
    if var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / math.sqrt(var))


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "nan"
    if p < 1e-300:
        return "< 1e-300"
    if p >= 0.001:
        return f"= {p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"= {mantissa}e{int(exponent)}"


def _format_share(x: float) -> str:
    if 0 < x < 0.01:
        return f"{x:.1%}"
    return f"{x:.0%}"


def _numeric_summary(name: str, w: float, r: float, ratio: float, d: float, p: str) -> str:
    more, less, unit = _PHRASES.get(name, (f"higher {name}", f"lower {name}", ""))
    if name in _PHRASES:
        head = "wrong examples are"
    else:
        head = "wrong examples have"
    if np.isfinite(ratio) and ratio > 0 and w > 0 and r > 0:
        if ratio >= 1:
            size = f"{ratio:.1f}x" if ratio >= 1.5 else _format_share(ratio - 1)
            return f"{head} {size} {more} ({w:.3g} vs {r:.3g}{unit}, adj. p {p})"
        size = f"{1 / ratio:.1f}x" if ratio <= 2 / 3 else _format_share(1 - ratio)
        return f"{head} {size} {less} ({w:.3g} vs {r:.3g}{unit}, adj. p {p})"
    return (
        f"mean {name} is {w:.3g} in wrong examples against {r:.3g} in right ones "
        f"(d = {d:.2f}, adj. p {p})"
    )


def _binary_summary(name: str, kind: str, rw: float, rr: float, p: str) -> str:
    if kind in ("token", "ngram"):
        what = f"contain {name!r}"
    elif kind == "label":
        what = f"have {name.replace('=', ' ', 1)}"
    else:
        what = f"have {name}"
    return (
        f"{_format_share(rw)} of wrong examples {what} against {_format_share(rr)} of right "
        f"ones (adj. p {p})"
    )


def _resolve_report(report_or_correct: Any) -> tuple[np.ndarray, Any]:
    if hasattr(report_or_correct, "correct"):
        return np.asarray(report_or_correct.correct, dtype=bool), report_or_correct
    correct = np.asarray(report_or_correct)
    if correct.ndim != 1:
        raise ValueError(
            f"correct must be a 1-D boolean array (one entry per example), got shape "
            f"{correct.shape}: pass a LossReport or report.correct."
        )
    if correct.dtype != bool:
        if not np.isin(correct, (0, 1)).all():
            raise ValueError(
                "correct must be boolean (True = the model got the example right); "
                "pass e.g. predictions == labels."
            )
        correct = correct.astype(bool)
    return correct, None


def _report_features(report: Any, **kwargs: Any) -> Features:
    """Extract features from a LossReport's inputs when no texts / tokens are given."""
    inputs = dict(getattr(report, "inputs", None) or {})
    input_name = kwargs.pop("input_name", None)
    if not inputs:
        raise ValueError(
            "this LossReport holds no inputs to extract features from: pass texts=, tokens= "
            "or token_ids= (or features= from extract_features)."
        )
    if input_name is None:
        input_name = next(iter(inputs))
    if input_name not in inputs:
        raise ValueError(
            f"input_name={input_name!r} is not among the report's inputs {list(inputs)}."
        )
    values = np.asarray(inputs[input_name])
    if values.dtype.kind in "USO":
        flat = values.reshape(len(values), -1)
        if flat.shape[1] == 1:
            return extract_features([str(v) for v in flat[:, 0]], **kwargs)
        return extract_features(None, [[str(v) for v in row] for row in flat], **kwargs)
    return extract_features(token_ids=values, **kwargs)


def compare_features(
    report_or_correct: Any,
    texts: Sequence[str] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    *,
    token_ids: np.ndarray | Sequence[Sequence[int]] | None = None,
    features: Features | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    vocab: Sequence[str] | None = None,
    vocab_counts: Mapping[Any, int] | None = None,
    input_name: str | None = None,
    example_ids: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | pd.DataFrame | None = None,
    report_columns: Sequence[str] | None = None,
    ngram_range: tuple[int, int] = (1, 3),
    min_support: int = 5,
    extractors: Iterable[Callable[[Example], Mapping[str, float | bool]]] = (),
    pos: bool = True,
    tokenizer: str | Callable[[str], list[str]] | None = None,
    alpha: float = 0.05,
    test: str = "welch",
    top: int | None = None,
) -> pd.DataFrame:
    """Test which features separate the wrong examples from the right ones.

    Numeric features: mean in each group, difference, ratio, Cohen's d (``effect``), and
    Welch's t-test (``test="welch"``) or Mann-Whitney U (``test="mannwhitney"``). Binary
    features: share of each group having the feature, ratio, Cohen's h (``effect``), and
    chi-squared (Yates) or Fisher's exact test when an expected count is below 5. All p-values
    are corrected together with Benjamini-Hochberg. Rows are sorted by p-value, then by the
    absolute effect.

    Args:
        report_or_correct: A LossReport (uses ``correct``, ``example_id``, 1-D ``label``,
            ``inputs`` when no text is given, ``confidence`` and ``extra`` columns) or a (N,)
            boolean array, True where the model is right.
        texts: N texts (see :func:`extract_features`).
        tokens: N token lists.
        token_ids: Padded token ids.
        features: Precomputed :func:`extract_features` output (fastest when repeated every
            epoch); the other extraction arguments are then ignored.
        labels: (N,) labels for ``label=`` indicators (default: the report's, if 1-D).
        label_names: Names of the label values.
        vocab: id -> token, to name token-id features.
        vocab_counts: Training token frequencies (rare / out-of-vocabulary shares).
        input_name: Which of ``report.inputs`` to use when no text is given (default: first).
        example_ids: (N,) ids when ``report_or_correct`` is an array.
        extra: More per-example numeric columns to test (mapping or DataFrame of N rows).
        report_columns: Report columns tested as numeric features (default ``confidence`` and
            every 1-D column in ``report.extra``, e.g. ``attn_entropy``).
        ngram_range: Passed to :func:`extract_features`.
        min_support: Passed to :func:`extract_features`.
        extractors: Passed to :func:`extract_features`.
        pos: Passed to :func:`extract_features`.
        tokenizer: Passed to :func:`extract_features`.
        alpha: Level of the false discovery rate for ``significant``.
        test: ``"welch"`` or ``"mannwhitney"`` for numeric features.
        top: Keep only the first ``top`` rows.

    Returns:
        DataFrame with columns ``feature, kind, test, support, n_wrong, wrong_value,
        right_value, difference, ratio, effect, p_value, p_adjusted, significant, summary``.
        ``support`` counts examples with the feature (binary) or with a value (numeric);
        ``wrong_value``/``right_value`` are group means or group shares. Empty when one of
        the groups is empty.

    Raises:
        ValueError: For an unknown ``test`` or inputs of mismatched lengths.
    """
    if test not in ("welch", "mannwhitney"):
        raise ValueError(f"test={test!r} is not supported: use 'welch' or 'mannwhitney'.")
    correct, report = _resolve_report(report_or_correct)
    n = len(correct)
    if report is not None:
        example_ids = np.asarray(report.example_id)
        rep_label = np.asarray(report.label) if getattr(report, "label", None) is not None else None
        if labels is None and rep_label is not None and rep_label.ndim == 1:
            labels = rep_label
    if features is None:
        kwargs = dict(
            labels=labels,
            vocab=vocab,
            vocab_counts=vocab_counts,
            example_ids=example_ids,
            ngram_range=ngram_range,
            min_support=min_support,
            extractors=extractors,
            pos=pos,
            tokenizer=tokenizer,
            label_names=label_names,
        )
        if texts is None and tokens is None and token_ids is None and report is not None:
            features = _report_features(report, input_name=input_name, **kwargs)
        else:
            features = extract_features(texts, tokens, token_ids=token_ids, **kwargs)
    if features.numeric.shape[0] != n:
        raise ValueError(
            f"features describe {features.numeric.shape[0]} examples but correct has {n}: "
            "pass features and the report / correct array of the same examples."
        )

    numeric = {c: features.numeric[c].to_numpy(dtype=np.float64) for c in features.numeric}
    builtin = _builtin_numeric()
    kinds = {
        c: "numeric" if c in builtin else ("pos" if c.startswith("pos_") else "user")
        for c in numeric
    }
    if report is not None:
        cols = report_columns
        if cols is None:
            cols = ["confidence"] + list((getattr(report, "extra", None) or {}).keys())
        for c in cols:
            values = getattr(report, c, None)
            if values is None:
                values = (getattr(report, "extra", None) or {}).get(c)
            if values is not None and np.ndim(values) == 1 and len(values) == n:
                numeric[c] = np.asarray(values, dtype=np.float64)
                kinds[c] = "report"
    if extra is not None:
        for c in extra:
            values = np.asarray(extra[c], dtype=np.float64)
            if values.shape != (n,):
                raise ValueError(
                    f"extra column {c!r} has shape {values.shape}; expected ({n},): one "
                    "number per example."
                )
            numeric[c] = values
            kinds[c] = "extra"

    wrong = ~correct
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or n_wrong == n:
        return pd.DataFrame(columns=COMPARE_COLUMNS)

    parts = []
    num = _numeric_table(numeric, kinds, wrong, test)
    if len(num):
        parts.append(num)
    binary = _binary_table(features, wrong)
    if len(binary):
        parts.append(binary)
    if not parts:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    table["p_adjusted"] = st.false_discovery_control(table["p_value"].to_numpy(), method="bh")
    table["significant"] = table["p_adjusted"].to_numpy() <= alpha
    order = np.lexsort(
        (
            table["feature"].to_numpy(dtype=str),
            -np.abs(table["effect"].to_numpy()),
            table["p_value"].to_numpy(),
        )
    )
    if top is not None:
        order = order[:top]
    table = table.iloc[order].reset_index(drop=True)
    table["summary"] = [
        _numeric_summary(f, w, r, q, e, _format_p(p))
        if t in ("welch", "mannwhitney")
        else _binary_summary(f, k, w, r, _format_p(p))
        for f, k, t, w, r, q, e, p in zip(
            table["feature"],
            table["kind"],
            table["test"],
            table["wrong_value"],
            table["right_value"],
            table["ratio"],
            table["effect"],
            table["p_adjusted"],
        )
    ]
    return table[COMPARE_COLUMNS]


def features_summary(table: pd.DataFrame, *, top: int = 5) -> str:
    """A few plain-text lines from a :func:`compare_features` table (for logs, TensorBoard).

    The text is not escaped: feature names are user data, escape them before writing
    markdown or HTML.

    Args:
        table: Output of :func:`compare_features`.
        top: Largest number of features listed.

    Returns:
        One line per significant feature, strongest first, or one line saying why there is
        none.
    """
    if table.empty:
        return "No comparison: every example is right, or every example is wrong."
    significant = table[table["significant"]]
    if significant.empty:
        return (
            f"No feature separates the wrong examples from the right ones "
            f"({len(table)} features tested, Benjamini-Hochberg)."
        )
    lines = [f"- {text}" for text in significant["summary"].head(top)]
    more = len(significant) - len(lines)
    if more > 0:
        lines.append(f"- ... and {more} more significant features")
    return "\n".join(lines)


def _builtin_numeric() -> set[str]:
    return {
        "n_tokens",
        "n_chars",
        "rare_share",
        "oov_share",
        "digit_share",
        "punct_share",
        "upper_share",
        "nonascii_share",
    }


def _numeric_table(
    numeric: Mapping[str, np.ndarray], kinds: Mapping[str, str], wrong: np.ndarray, test: str
) -> pd.DataFrame:
    rows = []
    for name, values in numeric.items():
        ok = np.isfinite(values)
        w = values[ok & wrong]
        r = values[ok & ~wrong]
        if len(w) < 2 or len(r) < 2:
            continue
        w_mean, r_mean = float(w.mean()), float(r.mean())
        if np.ptp(values[ok]) == 0:
            continue  # constant: nothing to test
        with warnings.catch_warnings():
            # near-constant groups: scipy warns about precision; the p-value is still usable
            warnings.simplefilter("ignore", RuntimeWarning)
            if test == "mannwhitney":
                p = float(st.mannwhitneyu(w, r, alternative="two-sided").pvalue)
            elif w.var() == 0 and r.var() == 0:
                p = 0.0  # two different constants: perfectly separated
            else:
                p = float(st.ttest_ind(w, r, equal_var=False).pvalue)
        ratio = w_mean / r_mean if r_mean != 0 else (math.inf if w_mean > 0 else math.nan)
        rows.append(
            (
                name,
                kinds.get(name, "numeric"),
                test,
                int(ok.sum()),
                len(w),
                w_mean,
                r_mean,
                w_mean - r_mean,
                ratio,
                _cohens_d(w, r),
                p,
            )
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS[: COMPARE_COLUMNS.index("p_value") + 1])


def _binary_table(features: Features, wrong: np.ndarray) -> pd.DataFrame:
    x = features.binary
    if x.shape[1] == 0:
        return pd.DataFrame()
    n = x.shape[0]
    n_wrong = int(wrong.sum())
    support = np.bincount(x.indices, minlength=x.shape[1]).astype(np.int64)
    a = np.asarray(x.T @ wrong.astype(np.int64)).ravel()
    testable = (support > 0) & (support < n)
    idx = np.flatnonzero(testable)
    a, s = a[idx], support[idx]
    p, fisher = binary_tests(a, s, n_wrong, n)
    rate_w = a / n_wrong
    rate_r = (s - a) / (n - n_wrong)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rate_w / rate_r
    effect = 2 * np.arcsin(np.sqrt(rate_w)) - 2 * np.arcsin(np.sqrt(rate_r))
    names = np.asarray(features.binary_names, dtype=object)[idx]
    kinds = np.asarray(features.binary_kinds, dtype=object)[idx]
    return pd.DataFrame(
        {
            "feature": names,
            "kind": kinds,
            "test": np.where(fisher, "fisher", "chi2"),
            "support": s,
            "n_wrong": a,
            "wrong_value": rate_w,
            "right_value": rate_r,
            "difference": rate_w - rate_r,
            "ratio": ratio,
            "effect": effect,
            "p_value": p,
        }
    )


# --------------------------------------------------------------------------------------------
# Error rate by bins and slices
# --------------------------------------------------------------------------------------------


def _wilson(k: np.ndarray, n: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / n
        denom = 1 + z**2 / n
        centre = (phat + z**2 / (2 * n)) / denom
        half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def error_rate_by_bins(
    values: np.ndarray | pd.Series, correct: np.ndarray, bins: int | Sequence[float] = 5
) -> pd.DataFrame:
    """Error rate in quantile bins of a numeric feature (e.g. length quintiles).

    Args:
        values: (N,) numbers; NaN values are left out.
        correct: (N,) booleans, True where the model is right (or a LossReport).
        bins: Number of quantile bins (fewer when values repeat), or explicit bin edges.

    Returns:
        One row per bin: ``bin`` (interval label), ``lower``, ``upper``, ``n``, ``n_wrong``,
        ``error_rate``, ``ci_low``, ``ci_high`` (95% Wilson interval) and ``share_of_errors``.

    Raises:
        ValueError: If the arrays have different lengths.
    """
    correct, _ = _resolve_report(correct)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != correct.shape:
        raise ValueError(
            f"values has shape {values.shape} and correct {correct.shape}: give one value per "
            "example."
        )
    ok = np.isfinite(values)
    v = values[ok]
    wrong = ~correct[ok]
    if isinstance(bins, int):
        if len(np.unique(v)) <= bins:
            cats = pd.Categorical(v)
            uniq = np.asarray(cats.categories, dtype=np.float64)
            codes = cats.codes
            lower = upper = uniq
            labels = [f"{u:g}" for u in uniq]
        else:
            codes_s, edges = pd.qcut(v, q=bins, retbins=True, duplicates="drop", labels=False)
            codes = np.asarray(codes_s)
            lower, upper = edges[:-1], edges[1:]
            labels = [
                f"[{lo:.4g}, {hi:.4g}]" if i == 0 else f"({lo:.4g}, {hi:.4g}]"
                for i, (lo, hi) in enumerate(zip(lower, upper))
            ]
    else:
        edges = np.asarray(bins, dtype=np.float64)
        codes = np.asarray(pd.cut(v, edges, labels=False, include_lowest=True))
        codes = np.where(np.isnan(codes.astype(float)), -1, codes).astype(int)
        lower, upper = edges[:-1], edges[1:]
        labels = [f"({lo:.4g}, {hi:.4g}]" for lo, hi in zip(lower, upper)]
    k = len(labels)
    codes = np.asarray(codes)
    inside = codes >= 0
    n_bin = np.bincount(codes[inside], minlength=k)
    n_wrong_bin = np.bincount(codes[inside], weights=wrong[inside], minlength=k).astype(np.int64)
    lo, hi = _wilson(n_wrong_bin, n_bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = n_wrong_bin / n_bin
        share = n_wrong_bin / max(int(wrong.sum()), 1)
    return pd.DataFrame(
        {
            "bin": labels,
            "lower": lower,
            "upper": upper,
            "n": n_bin,
            "n_wrong": n_wrong_bin,
            "error_rate": rate,
            "ci_low": lo,
            "ci_high": hi,
            "share_of_errors": share,
        }
    )


def _conditions(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    quantiles: Sequence[float],
) -> tuple[sp.csc_matrix, list[str], np.ndarray]:
    """All single conditions: binary flags plus thresholds of the numeric columns.

    Returns the (N, C) 0/1 CSC matrix, the condition texts and a group id per condition
    (conditions on the same numeric column share a group and are never paired).
    """
    if isinstance(features, Features):
        matrix, names, kinds = features.binary, features.binary_names, features.binary_kinds
        numeric = features.numeric
    else:
        matrix, names = features
        kinds = ["user"] * len(names)
        numeric = None
    matrix = sp.csc_matrix(matrix, dtype=np.int32)
    texts = [
        f"contains {nm!r}"
        if kd in ("token", "ngram")
        else (nm.replace("=", " = ", 1) if kd == "label" else nm)
        for nm, kd in zip(names, kinds)
    ]
    groups = list(range(len(texts)))
    blocks = [matrix]
    if numeric is not None and len(numeric.columns):
        cols = []
        for j, col in enumerate(numeric.columns):
            values = numeric[col].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            if len(np.unique(finite)) < 2:
                continue
            seen = set()
            for q in quantiles:
                thr = float(np.quantile(finite, q))
                if q >= 0.5:
                    flag, text = values > thr, f"{col} > {thr:.4g}"
                else:
                    flag, text = values <= thr, f"{col} <= {thr:.4g}"
                if text in seen or not flag.any() or flag.all():
                    continue
                seen.add(text)
                cols.append(flag)
                texts.append(text)
                groups.append(len(names) + j)
        if cols:
            blocks.append(sp.csc_matrix(np.column_stack(cols).astype(np.int32)))
    out = sp.hstack(blocks, format="csc", dtype=np.int32) if len(blocks) > 1 else matrix
    return out, texts, np.asarray(groups)


def find_slices(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    correct: np.ndarray,
    *,
    min_support: int = 20,
    top: int = 20,
    max_conditions: int = 200,
    quantiles: Sequence[float] = (0.25, 0.75),
    alpha: float = 0.05,
    require_gain: bool = True,
) -> pd.DataFrame:
    """Pairs of conditions ("n_tokens > 12 and contains 'ph'") with the highest error rate.

    Conditions are the binary features plus, for each numeric column, "<= 25% quantile"
    and "> 75% quantile". The ``max_conditions`` conditions with the best lower 95% bound
    on their own error rate are paired; pair supports come from sparse products
    ``X^T X`` and ``X_wrong^T X_wrong``. Kept pairs have at least ``min_support`` examples,
    are smaller than both conditions and more error-prone than either alone. Two tests,
    each Benjamini-Hochberg corrected over the kept pairs: ``p_value``, the slice against
    the rest of the data; ``p_gain``, the slice against the rest of its more error-prone
    condition (does adding the second condition matter?). With ``require_gain`` only pairs
    whose corrected ``p_gain`` is at most ``alpha`` are returned, so a strong single
    feature paired with an unrelated one does not crowd the list.

    Args:
        features: :func:`extract_features` output, or ``(sparse 0/1 matrix, names)``.
        correct: (N,) booleans, True where the model is right (or a LossReport).
        min_support: Minimum number of examples in a slice.
        top: Number of slices returned.
        max_conditions: Number of single conditions that are paired.
        quantiles: Quantiles turned into thresholds on the numeric columns.
        alpha: FDR level for ``significant`` and ``require_gain``.
        require_gain: Keep only pairs that beat their stronger condition significantly.

    Returns:
        DataFrame, highest error rate first: ``condition_a, condition_b, support, n_wrong,
        error_rate, base_error_rate, lift, error_rate_a, error_rate_b, gain, p_value,
        p_adjusted, significant, p_gain, p_gain_adjusted, summary, example_ids`` (array of
        the slice's example ids; :func:`slice_examples` gives the same).
    """
    correct, _ = _resolve_report(correct)
    matrix, texts, groups = _conditions(features, quantiles)
    if matrix.shape[0] != len(correct):
        raise ValueError(
            f"features describe {matrix.shape[0]} examples but correct has {len(correct)}."
        )
    example_ids = (
        features.example_ids if isinstance(features, Features) else np.arange(len(correct))
    )
    columns = [
        "condition_a",
        "condition_b",
        "support",
        "n_wrong",
        "error_rate",
        "base_error_rate",
        "lift",
        "error_rate_a",
        "error_rate_b",
        "gain",
        "p_value",
        "p_adjusted",
        "significant",
        "p_gain",
        "p_gain_adjusted",
        "summary",
        "example_ids",
    ]
    n = len(correct)
    wrong = (~correct).astype(np.int32)
    n_wrong = int(wrong.sum())
    base = n_wrong / n if n else math.nan
    support = np.diff(matrix.indptr)
    wrong_with = np.asarray(matrix.T @ wrong).ravel()
    eligible = np.flatnonzero(support >= min_support)
    if len(eligible) < 2 or n_wrong == 0:
        return pd.DataFrame(columns=columns)
    low, _ = _wilson(wrong_with[eligible], support[eligible])
    chosen = eligible[np.argsort(-low, kind="stable")[:max_conditions]]
    sub = matrix[:, chosen].tocsc()
    pair_n = (sub.T @ sub).toarray()
    sub_w = sp.csc_matrix(sub.multiply(wrong[:, None]))
    pair_w = (sub_w.T @ sub_w).toarray()
    s1 = support[chosen]
    w1 = wrong_with[chosen]
    r1 = w1 / s1
    i, j = np.triu_indices(len(chosen), k=1)
    pn, pw = pair_n[i, j], pair_w[i, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = pw / pn
    keep = (
        (pn >= min_support)
        & (pn < s1[i])
        & (pn < s1[j])
        & (rate > np.maximum(r1[i], r1[j]))
        & (groups[chosen][i] != groups[chosen][j])
    )
    i, j, pn, pw, rate = i[keep], j[keep], pn[keep], pw[keep], rate[keep]
    if len(i) == 0:
        return pd.DataFrame(columns=columns)
    p, _ = binary_tests(pw, pn, n_wrong, n)
    p_adj = st.false_discovery_control(p, method="bh")
    strong = np.where(r1[i] >= r1[j], i, j)
    p_gain, _ = binary_tests(pw, pn, w1[strong], s1[strong])
    p_gain_adj = st.false_discovery_control(p_gain, method="bh")
    order = np.lexsort((-pn, -rate))
    if require_gain:
        order = order[p_gain_adj[order] <= alpha]
    rows = []
    seen: set[bytes] = set()
    # pairs of co-extensive conditions ("phil" / "phil phoned") select the same examples:
    # show each example set once
    for k in order[: 50 * top]:
        if len(rows) >= top:
            break
        a, b = chosen[i[k]], chosen[j[k]]
        mask = (matrix[:, a].toarray().ravel() > 0) & (matrix[:, b].toarray().ravel() > 0)
        fingerprint = np.packbits(mask).tobytes()
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        best = max(r1[i[k]], r1[j[k]])
        summary = (
            f"{texts[a]} and {texts[b]}: error rate {_format_share(rate[k])} vs "
            f"{_format_share(base)} overall and {_format_share(best)} for "
            f"{texts[chosen[strong[k]]]} alone, {int(pn[k])} examples"
        )
        rows.append(
            (
                texts[a],
                texts[b],
                int(pn[k]),
                int(pw[k]),
                float(rate[k]),
                base,
                float(rate[k] / base) if base else math.nan,
                float(r1[i[k]]),
                float(r1[j[k]]),
                float(rate[k] - best),
                float(p[k]),
                float(p_adj[k]),
                bool(p_adj[k] <= alpha),
                float(p_gain[k]),
                float(p_gain_adj[k]),
                summary,
                np.asarray(example_ids)[mask],
            )
        )
    return pd.DataFrame(rows, columns=columns)


def slice_examples(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    *conditions: str,
    correct: np.ndarray | None = None,
    only_wrong: bool = False,
    quantiles: Sequence[float] = (0.25, 0.75),
) -> np.ndarray:
    """Example ids matching all the given conditions (texts as shown by :func:`find_slices`).

    Args:
        features: The same features given to :func:`find_slices`.
        *conditions: Condition texts, e.g. ``"contains 'ph'"``, ``"n_tokens > 12"``.
        correct: (N,) booleans, needed with ``only_wrong``.
        only_wrong: Keep only the examples the model gets wrong.
        quantiles: The same quantiles as given to :func:`find_slices`.

    Returns:
        Array of example ids.

    Raises:
        KeyError: For a condition that is not one of the features' conditions.
    """
    matrix, texts, _ = _conditions(features, quantiles)
    index = {t: k for k, t in enumerate(texts)}
    mask = np.ones(matrix.shape[0], dtype=bool)
    for cond in conditions:
        if cond not in index:
            close = [t for t in texts if cond.lower() in t.lower()][:5]
            raise KeyError(
                f"unknown condition {cond!r}; use the texts shown by find_slices"
                + (f", e.g. {close}" if close else "")
            )
        mask &= matrix[:, index[cond]].toarray().ravel() > 0
    if only_wrong:
        if correct is None:
            raise ValueError("only_wrong=True needs correct=: pass report.correct.")
        correct_arr, _ = _resolve_report(correct)
        mask &= ~correct_arr
    ids = features.example_ids if isinstance(features, Features) else np.arange(matrix.shape[0])
    return np.asarray(ids)[mask]

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
    >>> from keras_erranalysis.analysis import compare_features
    >>> texts = ["a short one", "a much much longer text with many words"] * 20
    >>> correct = np.array([True, False] * 20)
    >>> table = compare_features(correct, texts, pos=False)
    >>> table.iloc[0]["feature"] in {"n_tokens", "n_chars"}
    True
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from keras_erranalysis.decoding import printable_text

# Same pattern as nltk's wordpunct_tokenize: runs of word characters or of punctuation.
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


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
    if texts is not None:
        # Text that is not valid UTF-8 (surrogate escapes, as os.fsdecode makes from file
        # names) is kept visible as \udcff: tables and pandas' Arrow strings cannot hold it.
        texts = [printable_text(t) for t in texts]
    if tokens is not None:
        tokens = [[printable_text(t) for t in row] for row in tokens]
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
        return printable_text(value.item() if isinstance(value, np.generic) else value)
    if isinstance(label_names, Mapping):
        return printable_text(label_names.get(value, value))
    try:
        return printable_text(label_names[int(value)])
    except (IndexError, ValueError, TypeError):
        return printable_text(value)


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

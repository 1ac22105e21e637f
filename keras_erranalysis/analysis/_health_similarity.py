"""Near-duplicates at scale: character / token n-gram MinHash with LSH, and cosine pairs.

Numpy only, vectorised over all examples at once: the n-grams of a million short texts are
one integer array, their MinHash signatures a few passes of multiply-shift hashing over it,
and the LSH bands one sort. Every candidate pair is then checked with the exact Jaccard of
its two n-gram sets, so the threshold is exact and LSH only decides which pairs get looked
at (its misses are the only approximation: see :func:`lsh_bands`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_BUCKET_ALL_PAIRS = 64  # larger LSH buckets pair every member with the bucket's first
_ESTIMATE_MARGIN = 0.15  # estimate < threshold - margin (4.2 s.e.): not checked exactly


def text_ngrams(texts: Sequence[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Character n-grams of each text, padded with one space at each end, as integer codes.

    Args:
        texts: The texts.
        n: Characters per n-gram.

    Returns:
        ``(indptr, codes)``: the n-grams of text ``i`` are ``codes[indptr[i]:indptr[i+1]]``
        (uint64, in text order, repeats kept). A text of ``L`` characters has ``L + 3 - n``.

    Example:
        >>> indptr, codes = text_ngrams(["ab", ""], n=3)
        >>> indptr.tolist()  # " ab " has 2 trigrams, "  " none
        [0, 2, 2]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    padded = [f" {t} " for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32)
    return _ngram_codes(points.astype(np.uint64), lengths, n)


def token_ngrams(ids: np.ndarray, n: int = 3, *, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token-id n-grams of each row of ``ids`` (padding left out), as integer codes.

    Args:
        ids: ``(N, T)`` integer token ids.
        n: Tokens per n-gram (rows shorter than ``n`` give one n-gram of all their tokens).
        pad: The padding id.

    Returns:
        ``(indptr, codes)`` as :func:`text_ngrams`.
    """
    ids = np.asarray(ids).reshape(len(ids), -1)
    keep = ids != pad
    lengths = keep.sum(axis=1).astype(np.int64)
    # Row boundary markers (a value no token has) so short rows still give one n-gram.
    marker = np.uint64(1 << 40)
    values = ids.astype(np.uint64)[keep]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    with_marks = np.insert(values, np.repeat(starts, 1), marker)
    ends = starts + lengths + np.arange(1, len(lengths) + 1)
    with_marks = np.insert(with_marks, ends, marker)
    return _ngram_codes(with_marks, lengths + 2, n)


def _ngram_codes(symbols: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-gram codes within each segment of ``symbols`` (segments of ``lengths``)."""
    counts = np.maximum(lengths - n + 1, 0)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seg_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # position of each n-gram's first symbol in `symbols`
    owner = np.repeat(np.arange(len(lengths)), counts)
    offset = np.arange(indptr[-1], dtype=np.int64) - indptr[:-1][owner]
    first = seg_start[owner] + offset
    codes = np.zeros(len(first), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            codes = codes * np.uint64(0x100000001B3) + symbols[first + k] + np.uint64(1)
        codes = _mix(codes)
    return indptr, codes


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads codes over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def minhash_signatures(
    indptr: np.ndarray, codes: np.ndarray, num_perm: int = 192, *, seed: int = 1
) -> np.ndarray:
    """MinHash signature of every n-gram set: ``(N, num_perm)`` uint32.

    Hash ``k`` is multiply-shift over the 64-bit codes (``(a_k x + b_k) >> 32``, odd
    ``a_k``); the chance that two sets agree on one hash is their Jaccard similarity.
    Sets with no n-gram get all-ones rows (they match nothing but each other; callers
    leave them out).
    """
    n = len(indptr) - 1
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = np.diff(indptr) > 0
    if not has.any():
        return sig
    starts = indptr[:-1][has]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(num_perm):
            hashed = ((codes * a[k] + b[k]) >> np.uint64(32)).astype(np.uint32)
            sig[has, k] = np.minimum.reduceat(hashed, starts)
    return sig


def lsh_bands(threshold: float, num_perm: int = 192, *, recall: float = 0.95) -> tuple[int, int]:
    """``(bands, rows)`` for LSH: the fewest candidates that still catch pairs at the threshold.

    A pair of Jaccard similarity ``s`` becomes a candidate with probability
    ``1 - (1 - s**r)**b`` (``b`` bands of ``r`` hashes). More rows per band mean fewer
    false candidates; the choice is the most rows for which a pair exactly at the
    threshold is still found with probability ``recall`` (pairs above it more often).
    Candidates are then checked exactly, so false candidates cost time, never precision.

    Example:
        >>> lsh_bands(0.5)  # found with probability .955 at J = .5, .99 at .55
        (48, 4)
        >>> lsh_bands(0.5, 128)  # 3 rows: 3.5 times the candidates on short words
        (42, 3)
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, that agree on all ``rows`` hashes of at least one band.

    A bucket larger than 64 pairs each member with its first member only (such buckets
    come from n-grams shared by many texts; exact duplicates are removed before this).

    Returns:
        ``(P, 2)`` int64 array, unique rows.
    """
    n = len(signatures)
    # Pairs as one int64 each (i * n + j), deduplicated as the bands go: a close pair is
    # found by most bands, and keeping every band's copy until the end would cost ~bands
    # times the memory of the answer.
    merged = np.empty(0, dtype=np.int64)
    found: list[np.ndarray] = []
    pending = 0
    for band in range(bands):
        part = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in range(part.shape[1]):
                key = _mix(key * np.uint64(0x9E3779B97F4A7C15) + part[:, col])
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        boundary = np.flatnonzero(np.diff(sorted_key)) + 1
        starts = np.concatenate([[0], boundary])
        sizes = np.diff(np.concatenate([starts, [n]]))
        multi = sizes > 1
        if not multi.any():
            continue
        pairs = _bucket_pairs(order, starts[multi], sizes[multi])
        found.append(_sorted_unique(pairs.min(1) * np.int64(n) + pairs.max(1)))
        pending += len(found[-1])
        if pending > max(len(merged), 1 << 22):
            merged, found, pending = _sorted_unique(np.concatenate([merged, *found])), [], 0
    flat = _sorted_unique(np.concatenate([merged, *found])) if found else merged
    return np.stack([flat // n, flat % n], axis=1)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)  # np.unique hashes: slower
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _bucket_pairs(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """All pairs within each small bucket; each member with the first in large ones."""
    parts = []
    small = sizes <= _BUCKET_ALL_PAIRS
    for size in np.unique(sizes[small]):
        begin = starts[small][sizes[small] == size]
        left, right = np.triu_indices(int(size), k=1)
        parts.append(
            np.stack([order[begin[:, None] + left], order[begin[:, None] + right]], -1).reshape(
                -1, 2
            )
        )
    for begin, size in zip(starts[~small], sizes[~small]):
        members = order[begin + 1 : begin + size]
        parts.append(np.stack([np.full(len(members), order[begin]), members], axis=1))
    return np.concatenate(parts).astype(np.int64)


def jaccard_pairs(
    indptr: np.ndarray,
    codes: np.ndarray,
    pairs: np.ndarray,
    chunk: int = 1 << 18,
) -> np.ndarray:
    """Exact Jaccard similarity of the n-gram sets of each pair (sets, repeats ignored).

    Vectorised: each n-gram code gets a dense id, each set becomes a sorted run of keys
    ``set * n_codes + code_id``, and the intersection of a pair is the number of the
    smaller set's keys found (``searchsorted``) in the other's run. No Python object per
    set, so memory is a few arrays the size of ``codes``.
    """
    out = np.ones(len(pairs), dtype=np.float64)
    if not len(pairs):
        return out
    n = len(indptr) - 1
    dense, inverse = np.unique(codes, return_inverse=True)
    width = np.int64(max(len(dense), 1))
    owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    keys = np.unique(owner * width + inverse.reshape(-1).astype(np.int64))
    del dense, inverse, owner
    starts = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * width)
    size = np.diff(starts)
    for begin in range(0, len(pairs), chunk):
        block = pairs[begin : begin + chunk]
        i, j = block[:, 0], block[:, 1]
        swap = size[i] > size[j]
        small, big = np.where(swap, j, i), np.where(swap, i, j)
        lengths = size[small]
        total = int(lengths.sum())
        pair_of = np.repeat(np.arange(len(block)), lengths)
        offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        query = big[pair_of] * width + keys[starts[small][pair_of] + offset] % width
        found = np.searchsorted(keys, query)
        hit = keys[np.minimum(found, len(keys) - 1)] == query
        inter = np.bincount(pair_of[hit], minlength=len(block))
        union = size[i] + size[j] - inter
        out[begin : begin + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def signature_similarity(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 14):
    """MinHash estimate of each pair's Jaccard similarity (share of equal hashes).

    In chunks of ``chunk`` pairs: two gathered signature blocks of ``chunk * num_perm``
    hashes each (25 MB at 192 hashes), whatever the number of pairs.
    """
    out = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        equal = signatures[block[:, 0]] == signatures[block[:, 1]]
        out[start : start + chunk] = np.count_nonzero(equal, axis=1)
    return out / max(signatures.shape[1], 1)


def near_duplicate_pairs(
    indptr: np.ndarray,
    codes: np.ndarray,
    *,
    threshold: float = 0.5,
    num_perm: int = 192,
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of n-gram sets whose exact Jaccard similarity is at least ``threshold``.

    MinHash signatures, LSH banding (:func:`lsh_bands`) for candidates, a cheap signature
    estimate to drop candidates far below the threshold (estimate < threshold - 0.15, 4.2
    standard errors at J = 0.5 and 192 hashes), then the exact Jaccard of the rest.
    Sets with no n-gram are left out.

    Returns:
        ``(pairs, similarity)``: ``(P, 2)`` int64 with ``i < j``, and ``(P,)`` exact Jaccard.

    Example:
        >>> indptr, codes = text_ngrams(["forthright", "forthrigth", "cat"])
        >>> pairs, sim = near_duplicate_pairs(indptr, codes, threshold=0.5)
        >>> pairs.tolist(), sim.round(2).tolist()
        ([[0, 1]], [0.54])
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    signatures = minhash_signatures(indptr, codes, num_perm, seed=seed)
    empty = np.diff(indptr) == 0
    pairs = candidate_pairs(signatures, *lsh_bands(threshold, num_perm))
    if len(pairs):
        pairs = pairs[~(empty[pairs[:, 0]] | empty[pairs[:, 1]])]
        estimate = signature_similarity(signatures, pairs)
        pairs = pairs[estimate >= threshold - _ESTIMATE_MARGIN]
    similarity = jaccard_pairs(indptr, codes, pairs)
    keep = similarity >= threshold
    return pairs[keep], similarity[keep]


def cosine_pairs(
    vectors: np.ndarray, *, threshold: float = 0.99, chunk_rows: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows with cosine similarity at least ``threshold``, exactly, in row chunks.

    Zero rows match nothing. Cost ``N^2 D``: about 10 s for 50,000 rows of 64 numbers here.

    Returns:
        ``(pairs, similarity)``: ``(P, 2)`` int64 with ``i < j``, and ``(P,)``.
    """
    unit = _unit_rows(vectors)
    found_pairs, found_sims = [], []
    for start in range(0, len(unit), chunk_rows):
        block = unit[start : start + chunk_rows]
        sims = block @ unit[start:].T  # only j >= i
        rows, cols = np.nonzero(sims >= threshold)
        cols = cols + start
        rows = rows + start
        keep = cols > rows
        found_pairs.append(np.stack([rows[keep], cols[keep]], axis=1))
        found_sims.append(sims[rows[keep] - start, cols[keep] - start])
    if not found_pairs:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    return np.concatenate(found_pairs).astype(np.int64), np.concatenate(found_sims).astype(float)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    values = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return np.where(norms > 0, values / np.where(norms > 0, norms, 1), 0).astype(np.float32)


def kth_neighbour_distance(
    vectors: np.ndarray,
    k: int = 5,
    *,
    reference: np.ndarray | None = None,
    metric: str = "cosine",
    chunk_rows: int = 2048,
) -> np.ndarray:
    """Distance of each row to its ``k``-th nearest other row (exact, in row chunks).

    Args:
        vectors: ``(N, D)``.
        k: Which neighbour (1 = the nearest).
        reference: ``(M, D)`` rows to search instead of ``vectors`` itself (e.g. the
            training set for validation rows); default: the other rows of ``vectors``.
        metric: ``"cosine"`` (1 - cosine similarity) or ``"euclidean"``.
        chunk_rows: Rows per block of the distance matrix.

    Returns:
        ``(N,)`` float64 (NaN when there are not ``k`` other rows).
    """
    values = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    own = reference is None
    others = values if own else np.asarray(reference, np.float32).reshape(len(reference), -1)
    n = len(values)
    out = np.full(n, np.nan)
    if len(others) - own < k or n == 0:
        return out
    if metric == "cosine":
        values, others = _unit_rows(values), _unit_rows(others)
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")
    squared = (values.astype(np.float64) ** 2).sum(axis=1)
    squared_others = (others.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, n, chunk_rows):
        block = values[start : start + chunk_rows]
        if metric == "cosine":
            dist = 1.0 - block @ others.T
        else:
            dist = squared[start : start + len(block), None] + squared_others[None, :]
            dist = np.sqrt(np.maximum(dist - 2.0 * (block @ others.T), 0))
        if own:
            dist[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        out[start : start + len(block)] = np.partition(dist, k - 1, axis=1)[:, k - 1]
    return np.maximum(out, 0.0)

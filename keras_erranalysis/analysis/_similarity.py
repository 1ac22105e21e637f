"""Nearest examples in embedding space, and how embeddings are pooled and stored."""

from __future__ import annotations

import numpy as np

from keras_erranalysis._columns import check_pooling

_CHUNK_ROWS = 1 << 16  # rows of the query block in nearest()


def pool_numpy(
    values: np.ndarray, mask: np.ndarray | None = None, pooling: str = "mean"
) -> np.ndarray:
    """Pools ``(N, T, D)`` hidden states to ``(N, D)`` over the positions where ``mask`` is True.

    The reference implementation of the pooling done on the device by
    :func:`compute_embeddings` (rows with no counted position give zeros).

    Args:
        values: ``(N, T, D)`` array (``(N, D)`` is returned as is).
        mask: ``(N, T)`` booleans, True where a position counts (default: all).
        pooling: ``"mean"``, ``"max"``, ``"first"`` (first counted position) or ``"last"``
            (last counted position).

    Returns:
        ``(N, D)`` float32 array.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import pool_numpy
        >>> states = np.array([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (1, 3, 2)
        >>> pool_numpy(states, np.array([[True, True, False]]))  # the padded position is left out
        array([[2., 3.]], dtype=float32)
        >>> pool_numpy(states, np.array([[True, True, False]]), pooling="last")
        array([[3., 4.]], dtype=float32)
    """
    check_pooling(pooling)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 2:
        return values
    if values.ndim != 3:
        return values.reshape(values.shape[0], -1, values.shape[-1]).mean(axis=1)
    counted = np.ones(values.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    any_counted = counted.any(axis=1)
    if pooling == "mean":
        total = (values * counted[..., None]).sum(axis=1)
        return (total / np.maximum(counted.sum(axis=1), 1)[:, None]).astype(np.float32)
    if pooling == "max":
        filled = np.where(counted[..., None], values, -np.inf).max(axis=1)
        return np.where(any_counted[:, None], filled, 0.0).astype(np.float32)
    positions = np.arange(values.shape[1])
    if pooling == "first":
        index = np.where(counted, positions, values.shape[1]).min(axis=1)
    else:
        index = np.where(counted, positions, -1).max(axis=1)
    index = np.clip(index, 0, values.shape[1] - 1)
    picked = values[np.arange(values.shape[0]), index]
    return np.where(any_counted[:, None], picked, 0.0).astype(np.float32)


def storage_array(vectors: np.ndarray) -> np.ndarray:
    """The array to store: float16 (half the disk) unless a value would overflow it.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import storage_array
        >>> storage_array(np.ones((2, 3))).dtype
        dtype('float16')
        >>> storage_array(np.array([[1e5, 0.0]])).dtype  # would overflow float16
        dtype('float32')
    """
    values = np.asarray(vectors)
    if values.dtype == np.float16:
        return values
    finite = np.isfinite(values)
    if finite.all() and (values.size == 0 or np.abs(values).max() < 6.0e4):
        return values.astype(np.float16)
    return values.astype(np.float32)


def nearest(
    vectors: np.ndarray,
    query: np.ndarray,
    k: int = 10,
    *,
    exclude: int | None = None,
    chunk_rows: int = _CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` most cosine-similar to ``query``, exactly.

    Reads ``vectors`` (any float dtype, memory-mapped is fine) ``chunk_rows`` rows at a time,
    so extra memory is ``chunk_rows x D`` floats whatever ``N`` is. Zero vectors have
    similarity 0. Ties keep row order.

    Args:
        vectors: ``(N, D)`` array.
        query: ``(D,)`` vector.
        k: How many neighbours.
        exclude: A row to leave out (the query's own row).
        chunk_rows: Rows per chunk.

    Returns:
        ``(rows, similarities)``, most similar first.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import nearest
        >>> vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
        >>> rows, similarities = nearest(vectors, vectors[0], k=2, exclude=0)
        >>> rows, similarities.round(3)
        (array([1, 2]), array([0.994, 0.   ]))
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}.")
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    if q.shape[0] != vectors.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dims, vectors have {vectors.shape[1]}.")
    q_norm = np.linalg.norm(q)
    q = q / q_norm if q_norm > 0 else q
    best_rows = np.empty(0, dtype=np.int64)
    best_sims = np.empty(0, dtype=np.float64)
    for start in range(0, vectors.shape[0], chunk_rows):
        block = np.asarray(vectors[start : start + chunk_rows], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sims = (block @ q.astype(np.float32)) / norms
        sims = np.where(norms > 0, sims, 0.0).astype(np.float64)
        rows = np.arange(start, start + block.shape[0])
        if exclude is not None and start <= exclude < start + block.shape[0]:
            keep = rows != exclude
            rows, sims = rows[keep], sims[keep]
        if k < sims.shape[0]:
            top = np.argpartition(-sims, k)[:k] if k else np.empty(0, dtype=np.int64)
            rows, sims = rows[top], sims[top]
        best_rows = np.concatenate([best_rows, rows])
        best_sims = np.concatenate([best_sims, sims])
    order = np.lexsort((best_rows, -best_sims))[:k]
    return best_rows[order], best_sims[order]

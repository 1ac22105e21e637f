"""Per-example attention diagnostics computed on the device from recorded weights."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import tensorflow as tf

if TYPE_CHECKING:  # pragma: no cover
    pass

DIAGNOSTIC_NAMES = ("attn_entropy", "attn_uncovered", "attn_diagonality", "attn_monotonicity")


def attention_diagnostics_tensors(
    weights: Any,
    *,
    valid: Any = None,
    query_valid: Any = None,
    query_mask: Any = None,
    key_mask: Any = None,
    coverage_threshold: float = 0.1,
    layer_path: str = "",
) -> dict[str, Any]:
    """Per-example attention diagnostics of one layer, as TensorFlow ops.

    Works eagerly, inside ``tf.function`` and with XLA. The definitions are in the module
    docstring.

    Args:
        weights: ``(batch, heads, T_q, T_kv)`` or ``(batch, T_q, T_kv)`` attention weights.
        valid: Boolean mask of allowed query/key pairs, broadcastable to
            ``(batch, T_q, T_kv)``; None = all pairs.
        query_valid: Boolean ``(batch, T_q)`` mask of real queries; None = all.
        query_mask: Another ``(batch, T_q)`` mask of real queries (e.g. from the user).
        key_mask: A ``(batch, T_kv)`` mask of real keys.
        coverage_threshold: Weight above which a key counts as attended by a query.
        layer_path: Used in error messages only.

    Returns:
        ``{"attn_entropy": (batch,), "attn_uncovered": ..., "attn_diagonality": ...,
        "attn_monotonicity": ...}`` float32 tensors; NaN for an example with no valid query.
    """
    w = tf.cast(tf.convert_to_tensor(weights), tf.float32)
    if w.shape.rank == 3:
        w = w[:, None]
    shape = tf.shape(w)
    batch, t_q, t_kv = shape[0], shape[2], shape[3]
    pair = tf.ones(tf.stack([batch, t_q, t_kv]), tf.bool)
    if valid is not None:
        valid = tf.cast(valid, tf.bool)
        if valid.shape.rank == 4:  # per-head masks: a pair is valid if any head may use it
            valid = tf.reduce_any(valid, axis=1)
        if valid.shape.rank == 2:
            valid = valid[None]
        pair = pair & valid
    for mask, axis, what in (
        (query_valid, 2, "query"),
        (query_mask, 2, "query"),
        (key_mask, 1, "key"),
    ):
        if mask is None:
            continue
        mask = tf.cast(mask, tf.bool)
        _check_mask_length(mask, w, axis=3 if what == "key" else 2, what=what, path=layer_path)
        pair = pair & tf.expand_dims(mask, axis)
    pair_f = tf.cast(pair, tf.float32)
    n_keys = tf.reduce_sum(pair_f, axis=-1)  # (B, Q)
    query_ok = n_keys > 0
    query_ok_f = tf.cast(query_ok, tf.float32)
    n_queries = tf.reduce_sum(query_ok_f, axis=-1)  # (B,)

    # Renormalise over the valid keys (a user mask may drop keys the model used).
    masked = w * pair_f[:, None]
    probs = tf.math.divide_no_nan(masked, tf.reduce_sum(masked, axis=-1, keepdims=True))

    # Entropy, normalised by log(valid keys); only queries with a choice count.
    plogp = tf.where(probs > 0, probs * tf.math.log(tf.maximum(probs, 1e-30)), 0.0)
    entropy = -tf.reduce_sum(plogp, axis=-1)  # (B, H, Q)
    entropy = tf.math.divide_no_nan(entropy, tf.math.log(tf.maximum(n_keys, 1.0))[:, None])
    choice = tf.cast(query_ok & (n_keys >= 2), tf.float32)
    entropy = tf.math.divide_no_nan(
        tf.reduce_sum(tf.reduce_mean(entropy, axis=1) * choice, axis=-1),
        tf.reduce_sum(choice, axis=-1),
    )

    mean_probs = tf.reduce_mean(probs, axis=1)  # (B, Q, K), zero outside valid pairs

    # Coverage: valid keys that no valid query attends to above the threshold.
    key_ok = tf.reduce_any(pair, axis=1)  # (B, K)
    attended = tf.reduce_any(pair & (mean_probs > coverage_threshold), axis=1)
    uncovered = tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(key_ok & ~attended, tf.float32), axis=-1),
        tf.reduce_sum(tf.cast(key_ok, tf.float32), axis=-1),
    )

    # Diagonality: weighted distance to the diagonal vs. that of uniform weights.
    key_ok_f = tf.cast(key_ok, tf.float32)
    n_valid_keys = tf.reduce_sum(key_ok_f, axis=-1)
    query_pos = (tf.cumsum(query_ok_f, axis=-1) - 1.0) / tf.maximum(n_queries - 1.0, 1.0)[:, None]
    key_pos = (tf.cumsum(key_ok_f, axis=-1) - 1.0) / tf.maximum(n_valid_keys - 1.0, 1.0)[:, None]
    distance = tf.abs(query_pos[:, :, None] - key_pos[:, None, :]) * pair_f  # (B, Q, K)
    weighted = tf.reduce_sum(mean_probs * distance, axis=[1, 2])
    uniform = tf.reduce_sum(
        tf.math.divide_no_nan(tf.reduce_sum(distance, axis=-1), n_keys), axis=-1
    )
    diagonality = tf.where(
        uniform > 0,
        tf.clip_by_value(1.0 - tf.math.divide_no_nan(weighted, uniform), 0.0, 1.0),
        1.0,
    )

    # Monotonicity: the most-attended key of consecutive valid queries never moves back.
    argmax = tf.argmax(tf.where(pair, mean_probs, -1.0), axis=-1, output_type=tf.int32)
    order = tf.argsort(tf.cast(~query_ok, tf.int32), axis=-1, stable=True)
    argmax = tf.gather(argmax, order, batch_dims=1)  # valid queries first, in order
    step_index = tf.range(t_q - 1)[None, :]
    has_pair = tf.cast(step_index + 1, tf.float32) < n_queries[:, None]
    forward = argmax[:, 1:] >= argmax[:, :-1]
    n_pairs = tf.reduce_sum(tf.cast(has_pair, tf.float32), axis=-1)
    monotonicity = tf.where(
        n_pairs > 0,
        tf.math.divide_no_nan(
            tf.reduce_sum(tf.cast(forward & has_pair, tf.float32), axis=-1), n_pairs
        ),
        1.0,
    )

    nan = tf.fill(tf.shape(n_queries), math.nan)
    any_query = n_queries > 0
    values = {
        "attn_entropy": entropy,
        "attn_uncovered": uncovered,
        "attn_diagonality": diagonality,
        "attn_monotonicity": monotonicity,
    }
    return {name: tf.where(any_query, value, nan) for name, value in values.items()}


def _check_mask_length(mask: Any, weights: Any, *, axis: int, what: str, path: str) -> None:
    mask_len = mask.shape[-1] if mask.shape.rank else None
    weight_len = weights.shape[axis]
    if mask_len is not None and weight_len is not None and mask_len != weight_len:
        length = "T_q" if what == "query" else "T_kv"
        raise ValueError(
            f"{what}_mask has length {mask_len} but attention layer {path!r} has "
            f"{length}={weight_len}. Give masks per layer: {what}_mask={{'{path}': array}}."
        )

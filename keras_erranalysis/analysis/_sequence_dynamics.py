"""Example-level probabilities of label sequences, for the training dynamics of sequence models.

A sequence is right only when every counted token is right (exact match), so its dynamics are
example-level throughout, from the same per-token probabilities of the label:

- ``true_prob`` (cartography's confidence, the data-map regions) and ``margin`` (AUM) are the
  *weakest* counted token's. The weakest token's margin is above 0 exactly when the sequence is
  right, and an example that is wrong at an epoch has a token whose label probability is at
  most 0.5 there, so a sequence never right at any epoch never reaches the easy-to-learn
  corner (``compute_dynamics`` also enforces it for ties).
- ``sequence_prob`` is the probability of the whole label sequence per token: the geometric
  mean ``exp(mean log p(label_t))`` over the counted tokens (``P(label sequence) ** (1/n)``),
  the likelihood normalised for length. It ranks likely label errors
  (``likely_mislabeled(method="sequence")``, the default for sequence dynamics): a wrong
  label sequence is contradicted at most of its tokens, a hard but right one at a few, which
  the weakest token alone cannot tell apart.

Tokens that do not count (padding, ignored labels) are left out; a sequence without counted
tokens gets 1 for both (nothing contradicts its label), and one with an undefined (NaN)
counted probability gets NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Probabilities below this are taken as this in the log (float32's smallest normal number):
# a zero probability gives a finite, very low sequence probability rather than -inf.
_TINY = float(np.finfo(np.float32).tiny)


def sequence_probabilities(token_true_prob: Any, token_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """The weakest token's and the per-token whole-sequence probability of each label sequence.

    Args:
        token_true_prob: ``(..., N, T)`` probability of each position's given label (one
            epoch ``(N, T)``, or several ``(E, N, T)``).
        token_mask: ``(N, T)`` (or the same shape as ``token_true_prob``), True where a
            position counts.

    Returns:
        ``(weakest, per_token)``, each shaped ``token_true_prob.shape[:-1]``: the lowest
        counted probability, and ``exp(mean log p)`` over the counted positions.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[0.9, 0.9, 0.4, 0.0], [0.8, 0.5, 0.5, 0.5]])
        >>> mask = np.array([[True, True, True, False], [True, True, False, False]])
        >>> weakest, per_token = sequence_probabilities(probs, mask)
        >>> weakest.round(3).tolist(), per_token.round(3).tolist()
        ([0.4, 0.5], [0.687, 0.632])
    """
    probs = np.asarray(token_true_prob, dtype=np.float64)
    mask = np.broadcast_to(np.asarray(token_mask, dtype=bool), probs.shape)
    counted = mask.sum(axis=-1)
    undefined = (mask & np.isnan(probs)).any(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weakest = np.where(mask, probs, np.inf).min(axis=-1)
        log_sum = np.where(mask, np.log(np.clip(probs, _TINY, 1.0)), 0.0).sum(axis=-1)
    weakest = np.where(counted > 0, weakest, 1.0)
    per_token = np.where(counted > 0, np.exp(log_sum / np.maximum(counted, 1)), 1.0)
    weakest[undefined] = np.nan
    per_token[undefined] = np.nan
    return weakest, per_token

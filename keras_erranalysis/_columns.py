"""Column names shared by every layer: what the pass produces, and the order tables show it in."""

from __future__ import annotations

from typing import Literal

# Scalar per-example columns, in the order they appear in tables and on disk.
EXAMPLE_COLUMNS = (
    "example_id",
    "loss",
    "loss_sum",
    "loss_mean",
    "confidence",
    "true_prob",
    "margin",
    "correct",
    "token_accuracy",
    "n_tokens",
)


# Per-token (N, T) columns, only for sequence outputs.
TOKEN_COLUMNS = ("token_loss", "token_confidence", "token_true_prob", "token_margin", "token_mask")


HARDEST_COLUMNS = (
    "rank",
    "example_id",
    "loss",
    "confidence",
    "true_prob",
    "margin",
    "correct",
    "token_accuracy",
    "n_tokens",
    "label_text",
    "prediction_text",
    "label",
    "prediction",
    "input_text",
)


# Columns of the projector's metadata TSV, in order (shown when present).
PROJECTOR_COLUMNS = (
    "example_id",
    "input_text",
    "label_text",
    "prediction_text",
    "label",
    "prediction",
    "loss",
    "correct",
    "region",
)


# Embeddings: the stored array's name in a run epoch (embedding.npy), and how a sequence's
# vectors are pooled into one per example.
EMBEDDING = "embedding"
Pooling = Literal["mean", "max", "first", "last"]
POOLINGS = ("mean", "max", "first", "last")


def check_pooling(pooling: str) -> None:
    """Raises a ValueError naming the choices when ``pooling`` is not one of them."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")

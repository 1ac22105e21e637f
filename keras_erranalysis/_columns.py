"""Column names shared by every layer: what the pass produces, and the order tables show it in."""

from __future__ import annotations

from typing import Literal

# Scalar per-example columns, in the order they appear in tables and on disk.
_PER_EXAMPLE = (
    "confidence",
    "true_prob",
    "margin",
    "correct",
    "token_accuracy",
    "n_tokens",
)
EXAMPLE_COLUMNS = ("example_id", "loss", "loss_sum", "loss_mean", *_PER_EXAMPLE)

# A classifier's tables leave out the token columns (one "token" each: constant or = correct).
TOKEN_ONLY = ("token_accuracy", "n_tokens")
CLASSIFIER_COLUMNS = tuple(c for c in EXAMPLE_COLUMNS if c not in TOKEN_ONLY)

# Per-token (N, T) columns, only for sequence outputs.
TOKEN_COLUMNS = ("token_loss", "token_confidence", "token_true_prob", "token_margin", "token_mask")

# The decoded side of a table of examples, after the numbers: the teacher-forced
# prediction and (when the run decodes free-running) the generated output side by side.
_TEXT = ("label_text", "prediction_text", "generated_text", "label", "prediction", "input_text")

# Corpus numbers of the free-running outputs (the ``generation`` table) shown per epoch:
# table column -> TensorBoard scalar / report name.
GENERATION_NUMBERS = {
    "corpus_bleu": "generated_corpus_bleu",
    "chrf": "generated_chrf",
    "rouge_1": "generated_rouge_1",
    "rouge_2": "generated_rouge_2",
    "rouge_l": "generated_rouge_l",
    "exact_match": "generated_exact_match",
    "teacher_forced_exact_match": "teacher_forced_exact_match",
    "exposure_gap": "exposure_gap_rate",
    "perplexity": "teacher_forced_perplexity",
}

# The hardest examples in full (HTML report): every number, then the text.
HARDEST_COLUMNS = ("rank", "example_id", "loss", *_PER_EXAMPLE, *_TEXT)

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


# The hardest examples as text (TensorBoard markdown, the terminal): the numbers a reader
# scans first, then the text.
HARDEST_TEXT_COLUMNS = ("rank", "example_id", "loss", "confidence", "margin", "correct", *_TEXT)

# Embeddings: the stored array's name in a run epoch (embedding.npy), and how a sequence's
# vectors are pooled into one per example.
EMBEDDING = "embedding"
Pooling = Literal["mean", "max", "first", "last"]
POOLINGS = ("mean", "max", "first", "last")


def check_pooling(pooling: str) -> None:
    """Raises a ValueError naming the choices when ``pooling`` is not one of them."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


# Names of a padding token at id 0, lower-cased (the empty token is always padding).
PADDING_NAMES = ("", "<pad>", "[pad]", "pad", "<padding>")

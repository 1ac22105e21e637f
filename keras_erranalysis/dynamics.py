"""Training dynamics per example: cartography, margins, forgetting, likely label errors.

Pure numpy/pandas over per-epoch histories shaped ``(E, N)`` (E epochs, N examples), as the
run folder or the in-flight recorder stores them. Every function reads its inputs in column
chunks, so memory-mapped histories of a million examples over fifty epochs are summarised
with a few tens of megabytes of working memory.

What is computed, and from which paper:

- Dataset cartography (Swayamdipta et al., 2020, "Dataset Cartography: Mapping and
  Diagnosing Datasets with Training Dynamics"): ``confidence`` = mean over epochs of the
  probability of the *given* label, ``variability`` = its standard deviation (population,
  ``ddof=0``, as in the paper's code), ``correctness`` = share of epochs predicted right,
  and a ``region``:

  * ``"ambiguous"`` when ``variability >= variability_threshold`` (default 0.2: the given
    label's probability swings by 0.2 standard deviations or more across epochs);
  * otherwise ``"easy-to-learn"`` when ``confidence >= confidence_threshold`` (default 0.5);
  * otherwise ``"hard-to-learn"`` (low confidence, low variability: the model consistently
    disagrees with the label; this is where label errors concentrate).

  The paper draws the regions by eye on the data map; these thresholds are ours, fixed so
  that the regions mean the same thing from one run to the next.
- Area under the margin (Pleiss et al., 2020, "Identifying Mislabeled Data using the Area
  Under the Margin Ranking"): ``aum`` = mean over epochs of (probability of the given label
  minus the largest other probability). The paper uses logits; we use probabilities, which
  keeps the value in ``[-1, 1]`` and comparable between models. Negative AUM means that on
  average some other class won.
- Forgetting events (Toneva et al., 2019, "An Empirical Study of Example Forgetting during
  Deep Neural Network Learning"): ``forgetting_events`` = number of right -> wrong
  transitions between consecutive recorded epochs. Examples never predicted right have 0
  events but ``never_learned=True`` (the paper ranks them as forgotten infinitely often).
- Loss-rank stability: ``hard_epochs`` = in how many epochs the example is among the
  ``hard_k`` highest losses of that epoch, ``hard_streak`` = the longest run of consecutive
  such epochs.
- How many labels are wrong (Northcutt, Jiang and Chuang, 2021, "Confident Learning:
  Estimating Uncertainty in Dataset Labels"): :func:`estimate_num_label_errors` counts the
  off-diagonal of the calibrated confident joint, with epoch-averaged training
  probabilities standing in for out-of-sample ones. The default flag rule of
  :func:`likely_mislabeled` (``method="aum_cl"``) flags down the AUM ranking to that count
  when the fixed AUM cut-off flags fewer; where the joint concentrates (one other class
  takes at least 10% of a class, as under systematic flips between two classes), most of
  that cell is flipped, and every row of it whose AUM is below 0 is flagged.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")

#: Scores understood by :func:`likely_mislabeled`: name -> what it ranks and flags.
MISLABEL_METHODS = {
    "aum_cl": (
        "low area under the margin, as 'aum' (flagged: aum < threshold, default -0.2, or among "
        "the lowest AUMs up to estimate_num_label_errors(dyn), the confident-learning count of "
        "label errors; where one other class holds >= 10% of a class, that cell's rows with "
        "aum < 0; needs integer class ids in the label column and predictions, else the AUM "
        "cut alone)"
    ),
    "aum": (
        "low area under the margin (flagged: aum < threshold, default -0.2: on average "
        "another class beats the given label by 0.2 in probability)"
    ),
    "confidence": "low mean probability of the given label (flagged: confidence < 0.5)",
    "correctness": "share of epochs wrong, ties broken by AUM (flagged: correctness < 0.5)",
    "hard_to_learn": (
        "low confidence and low variability, the cartography paper's hard-to-learn corner: "
        "score = 1 - confidence - variability (flagged: region == 'hard-to-learn')"
    ),
}

# Chosen on dev data only (benchmarks/dev_mislabeled_rules.py: digits with noise seeds
# 10-14 and make_classification, 10%/20% symmetric and 20% class-pair noise), never on the
# benchmark's seeds: on those 30 runs "aum_cl" flagged exactly what "aum" flags under
# symmetric 10% noise, and raised F1 under 20% class-pair noise (0.888 -> 0.897, 9 of 10
# runs better, none worse) and 20% symmetric noise (0.945 -> 0.946).
# The per-cell pick in concentrated cells was added on the same dev protocol with seeds
# 10-19 (benchmarks/dev_mislabeled_rules.py): under 20% class-pair noise F1 0.896 -> 0.909
# (17 of 20 runs better), under symmetric noise the flag sets are unchanged; under a mixed
# noise checked afterwards (half pair flips, half random) F1 0.931 -> 0.927 (12 of 20 worse).
# That pick was then replaced by the cut at 0 within concentrated cells (same protocol, same
# 80 runs): pairs 0.909 -> 0.927 (20 of 20 runs better), mixed 0.927 -> 0.934 (17 better,
# 2 worse), symmetric flag sets unchanged; no concentrated cell on 10 noise-free runs.
DEFAULT_METHOD = "aum_cl"

# A cell (given class i, suggested class j) of the calibrated confident joint whose count
# reaches this share of class i is "concentrated": its rows are flagged at aum < 0.
# Symmetric 20% noise over 10 classes puts about 2% of a class in each cell, a class-pair
# flip puts its whole rate in one; dev F1 was the same for any share in 0.075-0.15.
CONCENTRATED_CELL_SHARE = 0.1

# Within a concentrated cell most rows are flipped (the prior odds of a wrong label are high),
# so a row is flagged as soon as the other class wins on average: aum < 0, not the global
# -0.2 made for rare flips. Dev F1 (dev_mislabeled_rules.py) is flat for cuts from -0.1 to
# 0.05 (pairs 0.921-0.927, mixed 0.932-0.935) and falls at 0.1 (0.916, 0.930); 0 is the
# natural point, not a fitted one. Picking the cell's estimated count instead (cleanlab's
# prune_by_noise_rate) was worse: the count is 5-10% low under pair noise (pairs 0.909).
CONCENTRATED_CELL_AUM_THRESHOLD = 0.0

# First chosen on the benchmark's digits runs (benchmarks/bench_mislabeled.py, two seeds,
# before the dev protocol existed): mean F1 of the flagged set peaked at -0.2; aum < 0 also
# flags clean examples that are merely learned late (recall 0.99, precision 0.73-0.84).
# Rechecked on dev data only (dev_mislabeled_rules.py, seeds 10-19, 60 runs, with "aum_cl"):
# mean F1 0.921 at -0.2, 0.923 at -0.3, 0.921 at -0.25, 0.915 at -0.15; -0.3 is better under
# 10% symmetric noise (16 of 20 runs), worse under 20% (11 of 20) and even under class
# pairs, so the value was kept.
DEFAULT_AUM_THRESHOLD = -0.2

# Working-set budget per input array per chunk, in float64 elements (16 MB).
_CHUNK_ELEMENTS = 1 << 21


class _EpochMatrix:
    """Read-only view of an ``(E, N)`` history given as one array or a list of E arrays.

    A list of per-epoch 1-D arrays (e.g. one memory-mapped ``.npy`` per epoch folder) is
    never stacked: chunks are gathered column range by column range.
    """

    def __init__(self, values: Any, name: str, *, trailing: int = 0):
        self.name = name
        if isinstance(values, np.ndarray):
            self.rows: list[np.ndarray] | None = None
            self.array: np.ndarray | None = values
            shape = values.shape
        elif isinstance(values, Sequence) and len(values) and not np.isscalar(values[0]):
            self.rows = [r if isinstance(r, np.ndarray) else np.asarray(r) for r in values]
            self.array = None
            inner = {r.shape for r in self.rows}
            if len(inner) != 1:
                raise ValueError(
                    f"{name}: the per-epoch arrays have different shapes {sorted(inner)}; "
                    "every epoch must hold the same examples in the same order."
                )
            shape = (len(self.rows), *inner.pop())
        else:
            self.rows = None
            self.array = np.asarray(values)
            shape = self.array.shape
        if len(shape) != 2 + trailing:
            want = "(E, N)" if trailing == 0 else "(E, N, T)"
            raise ValueError(
                f"{name} must have shape {want} (epochs first), got {tuple(shape)}; pass a "
                f"2-D array such as run.stack({name!r}) or a list of per-epoch arrays."
            )
        self.shape = tuple(int(s) for s in shape)

    @property
    def num_epochs(self) -> int:
        return self.shape[0]

    @property
    def num_examples(self) -> int:
        return self.shape[1]

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Rows of all epochs for examples ``start:stop``, as a fresh in-memory array."""
        if self.array is not None:
            return np.array(self.array[:, start:stop])
        return np.stack([r[start:stop] for r in self.rows])

    def row(self, epoch: int) -> np.ndarray:
        """All examples of one epoch, as a fresh in-memory array."""
        if self.array is not None:
            return np.array(self.array[epoch])
        return np.array(self.rows[epoch])

    def release(self) -> None:
        """Drop pages of read-only memory maps from this process (the OS keeps the cache).

        Without this, the resident set grows by the full size of every mapped file as the
        chunks are read, although nothing is allocated.
        """
        for arr in [self.array] if self.rows is None else self.rows:
            handle = getattr(arr, "_mmap", None)
            if handle is None or getattr(arr, "mode", None) != "r":
                continue
            try:
                handle.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):  # pragma: no cover - platform
                return


def _chunk_columns(num_epochs: int, chunk_size: int | None, per_column: int = 1) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
        return int(chunk_size)
    return max(1, _CHUNK_ELEMENTS // max(1, num_epochs * per_column))


def _mode_rows(values: np.ndarray, use: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent value per column of ``values`` (E, C) among rows where ``use`` is True.

    Returns ``(mode, count)``; columns with nothing to count get ``mode=-1, count=0``. Ties
    go to the smallest label.
    """
    num_rows, num_cols = values.shape
    values = values.astype(np.int64, copy=False)
    if use is None:
        use = np.ones(values.shape, dtype=bool)
    use = use & (values >= 0)
    if num_cols == 0 or not use.any():
        return np.full(num_cols, -1, np.int64), np.zeros(num_cols, np.int64)
    num_classes = int(values[use].max()) + 1
    cols = np.broadcast_to(np.arange(num_cols), values.shape)
    flat = cols[use] * num_classes + values[use]
    if num_cols * num_classes <= max(4 * flat.size, _CHUNK_ELEMENTS):
        # A columns x classes table no bigger than the values themselves: one bincount.
        table = np.bincount(flat, minlength=num_cols * num_classes).reshape(num_cols, -1)
        mode = table.argmax(axis=1)
        count = table[np.arange(num_cols), mode]
        return np.where(count > 0, mode, -1).astype(np.int64), count.astype(np.int64)
    # Sparse: the (column, value) pairs that occur, never a columns x classes table (a
    # vocabulary-sized label set would make that table gigabytes).
    pairs, counts = np.unique(flat, return_counts=True)
    pair_col, pair_value = pairs // num_classes, pairs % num_classes
    # Per column the largest count, ties to the smallest value: sort, take each column's first.
    order = np.lexsort((pair_value, -counts, pair_col))
    first = order[np.r_[True, pair_col[order][1:] != pair_col[order][:-1]]]
    mode = np.full(num_cols, -1, np.int64)
    count = np.zeros(num_cols, np.int64)
    mode[pair_col[first]] = pair_value[first]
    count[pair_col[first]] = counts[first]
    return mode, count


def _block_stats(
    true_prob: np.ndarray,
    margin: np.ndarray,
    correct: np.ndarray,
    prediction: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Per-column statistics of one ``(E, C)`` block."""
    num_epochs = true_prob.shape[0]
    tp = true_prob.astype(np.float64)
    confidence = tp.mean(axis=0)
    variability = tp.std(axis=0)
    correct = correct.astype(bool)
    ever = correct.any(axis=0)
    first = np.where(ever, correct.argmax(axis=0), -1)
    forgetting = (
        (correct[:-1] & ~correct[1:]).sum(axis=0)
        if num_epochs > 1
        else np.zeros(correct.shape[1], np.int64)
    )
    out = {
        "confidence": confidence,
        "variability": variability,
        "correctness": correct.mean(axis=0),
        "aum": margin.astype(np.float64).mean(axis=0),
        "forgetting_events": forgetting.astype(np.int64),
        "never_learned": ~ever,
        "first_learned_epoch": first.astype(np.int64),
        "final_correct": correct[-1].copy(),
    }
    if prediction is not None:
        mode, count = _mode_rows(prediction)
        out["predicted_label"] = mode
        out["predicted_label_share"] = count / num_epochs
        # The label the model keeps predicting *instead of* the given one.
        wrong_mode, wrong_count = _mode_rows(prediction, ~correct)
        out["suggested_label"] = wrong_mode
        out["suggested_label_share"] = wrong_count / num_epochs
    return out


def _regions(
    confidence: np.ndarray,
    variability: np.ndarray,
    confidence_threshold: float,
    variability_threshold: float,
) -> pd.Categorical:
    codes = np.where(
        variability >= variability_threshold, 1, np.where(confidence >= confidence_threshold, 0, 2)
    )
    return pd.Categorical.from_codes(codes, categories=list(REGIONS))


def compute_dynamics(
    true_prob: Any,
    margin: Any,
    correct: Any,
    loss: Any = None,
    prediction: Any = None,
    *,
    label: Any = None,
    example_id: Any = None,
    epochs: Sequence[int] | None = None,
    hard_k: int | None = None,
    confidence_threshold: float = 0.5,
    variability_threshold: float = 0.2,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Summarise per-example training dynamics over recorded epochs.

    Each history argument is an ``(E, N)`` array (epochs first; ``np.memmap`` is fine) or a
    list of ``E`` arrays of shape ``(N,)`` (e.g. the per-epoch ``.npy`` files of a run, never
    stacked in memory). Inputs are read in column chunks, so extra memory stays at a few
    tens of megabytes whatever ``N`` is.

    Args:
        true_prob: Probability of the given label, per epoch and example.
        margin: Given-label probability minus the largest other probability, in ``[-1, 1]``.
        correct: Whether the prediction matched the label (bool).
        loss: Optional per-example loss; ranks examples for ``hard_epochs``/``hard_streak``
            and gives ``loss_mean``. Without it, examples are ranked by ``1 - true_prob``.
        prediction: Optional predicted label (int); gives ``predicted_label`` (most frequent
            prediction), ``suggested_label`` (most frequent *wrong* prediction, i.e. the
            label the model keeps predicting instead of the given one; -1 if always right)
            and their shares of epochs.
        label: Optional given labels ``(N,)``, copied into a ``label`` column.
        example_id: Optional ids ``(N,)`` used as the index (default ``0..N-1``).
        epochs: Epoch numbers of the E rows (default ``1..E``), used for
            ``first_learned_epoch``.
        hard_k: How many of the highest losses count as "hardest" in each epoch. Default:
            10% of N (at least 1).
        confidence_threshold: Region boundary between easy- and hard-to-learn.
        variability_threshold: Variability from which an example is "ambiguous".
        chunk_size: Examples per chunk (default: about 4M values per chunk).

    Returns:
        DataFrame indexed by ``example_id``, one row per example, with columns
        ``confidence``, ``variability``, ``correctness``, ``region`` (categorical),
        ``aum``, ``forgetting_events``, ``never_learned``, ``first_learned_epoch`` (-1 if
        never), ``final_correct``, ``hard_epochs``, ``hard_streak``, plus ``loss_mean``
        when ``loss`` is given, the prediction columns when ``prediction`` is given, and
        ``label`` when given.

    Example:
        >>> import numpy as np
        >>> tp = np.array([[0.2, 0.9], [0.8, 0.9], [0.3, 0.95]])
        >>> mg = 2 * tp - 1
        >>> dyn = compute_dynamics(tp, mg, tp > 0.5)
        >>> dyn["forgetting_events"].tolist(), dyn["region"].tolist()
        ([1, 0], ['ambiguous', 'easy-to-learn'])
    """
    tp_m = _EpochMatrix(true_prob, "true_prob")
    num_epochs, num_examples = tp_m.shape
    if num_epochs < 1:
        raise ValueError("true_prob has no epochs; record at least one epoch first.")
    matrices = {"true_prob": tp_m, "margin": _EpochMatrix(margin, "margin")}
    matrices["correct"] = _EpochMatrix(correct, "correct")
    if loss is not None:
        matrices["loss"] = _EpochMatrix(loss, "loss")
    if prediction is not None:
        matrices["prediction"] = _EpochMatrix(prediction, "prediction")
    for name, matrix in matrices.items():
        if matrix.shape != tp_m.shape:
            raise ValueError(
                f"{name} has shape {matrix.shape} but true_prob has {tp_m.shape}; all "
                "histories must cover the same epochs and examples."
            )
    epoch_numbers = np.arange(1, num_epochs + 1) if epochs is None else np.asarray(epochs)
    if epoch_numbers.shape != (num_epochs,):
        raise ValueError(f"epochs must list {num_epochs} epoch numbers, got {len(epoch_numbers)}.")
    if hard_k is None:
        hard_k = max(1, math.ceil(0.1 * num_examples))
    if not 1 <= hard_k <= max(1, num_examples):
        raise ValueError(f"hard_k must be between 1 and N={num_examples}, got {hard_k}.")

    # Pass 1, row by row: the hard_k-th highest loss of each epoch.
    rank_source = matrices.get("loss", tp_m)
    thresholds = np.empty(num_epochs, np.float64)
    for t in range(num_epochs):
        row = _rank_values(rank_source.row(t), from_loss="loss" in matrices)
        if num_examples:
            thresholds[t] = np.partition(row, num_examples - hard_k)[num_examples - hard_k]
        del row
        rank_source.release()

    # Pass 2, column chunk by column chunk.
    step = _chunk_columns(num_epochs, chunk_size)
    columns: dict[str, np.ndarray] = {}
    for start in range(0, num_examples, step):
        stop = min(start + step, num_examples)
        blocks = {name: m.chunk(start, stop) for name, m in matrices.items()}
        stats = _block_stats(
            blocks["true_prob"], blocks["margin"], blocks["correct"], blocks.get("prediction")
        )
        ranked = _rank_values(blocks.get("loss", blocks["true_prob"]), from_loss="loss" in blocks)
        in_top = ranked >= thresholds[:, None]
        stats["hard_epochs"] = in_top.sum(axis=0).astype(np.int64)
        stats["hard_streak"] = _longest_run(in_top)
        if "loss" in blocks:
            stats["loss_mean"] = blocks["loss"].astype(np.float64).mean(axis=0)
        for key, value in stats.items():
            # Written into place: no list of parts to concatenate (and hold twice) at the end.
            if key not in columns:
                columns[key] = np.empty(num_examples, dtype=value.dtype)
            columns[key][start:stop] = value
        del blocks, ranked, in_top, stats
        for matrix in matrices.values():
            matrix.release()

    if not columns:
        columns = {k: np.empty(0) for k in ("confidence", "variability")}
    frame = _assemble(
        columns,
        num_examples,
        label=label,
        example_id=example_id,
        epoch_numbers=epoch_numbers,
        confidence_threshold=confidence_threshold,
        variability_threshold=variability_threshold,
    )
    return frame


def _rank_values(values: np.ndarray, *, from_loss: bool) -> np.ndarray:
    """Higher = harder. Non-finite losses count as the hardest."""
    if from_loss:
        ranked = values.astype(np.float64)
        return np.where(np.isfinite(ranked), ranked, np.inf)
    return 1.0 - values.astype(np.float64)


def _longest_run(flags: np.ndarray) -> np.ndarray:
    """Longest run of consecutive True values down each column of ``flags`` (E, C)."""
    run = np.zeros(flags.shape[1], np.int64)
    best = np.zeros(flags.shape[1], np.int64)
    for row in flags:
        run = np.where(row, run + 1, 0)
        np.maximum(best, run, out=best)
    return best


def _assemble(
    columns: dict[str, np.ndarray],
    num_examples: int,
    *,
    label: Any,
    example_id: Any,
    epoch_numbers: np.ndarray,
    confidence_threshold: float,
    variability_threshold: float,
) -> pd.DataFrame:
    index = (
        np.arange(num_examples, dtype=np.int64) if example_id is None else np.asarray(example_id)
    )
    if index.shape != (num_examples,):
        raise ValueError(f"example_id must have shape ({num_examples},), got {index.shape}.")
    first = columns.get("first_learned_epoch")
    if first is not None:
        learned = first >= 0
        first[learned] = epoch_numbers[first[learned]]
    order = [
        "confidence",
        "variability",
        "correctness",
        "region",
        "aum",
        "forgetting_events",
        "never_learned",
        "first_learned_epoch",
        "final_correct",
        "hard_epochs",
        "hard_streak",
        "loss_mean",
        "predicted_label",
        "predicted_label_share",
        "suggested_label",
        "suggested_label_share",
    ]
    data: dict[str, Any] = {}
    if label is not None:
        label = np.asarray(label)
        if label.shape != (num_examples,):
            raise ValueError(f"label must have shape ({num_examples},), got {label.shape}.")
        data["label"] = label
    for name in order:
        if name == "region" and "confidence" in columns:
            data[name] = _regions(
                columns["confidence"],
                columns["variability"],
                confidence_threshold,
                variability_threshold,
            )
        elif name in columns:
            data[name] = columns[name]
    return pd.DataFrame(data, index=pd.Index(index, name="example_id"), copy=False)


def compute_token_dynamics(
    token_true_prob: Any,
    token_margin: Any,
    token_mask: Any,
    token_prediction: Any = None,
    token_label: Any = None,
    *,
    example_id: Any = None,
    epochs: Sequence[int] | None = None,
    confidence_threshold: float = 0.5,
    variability_threshold: float = 0.2,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Training dynamics of every counted token of a sequence model (e.g. NER, tagging).

    A token whose label the model keeps contradicting across epochs (low ``aum``,
    ``suggested_label`` stable) is a candidate token label error;
    ``likely_mislabeled(token_dyn)`` ranks them.

    Args:
        token_true_prob: ``(E, N, T)`` probability of the given token label (or a list of E
            ``(N, T)`` arrays).
        token_margin: ``(E, N, T)`` given-label probability minus the largest other one.
        token_mask: ``(N, T)`` or ``(E, N, T)`` bool, True where a position is counted
            (padding and ignored labels False). With ``(E, N, T)`` a position counts when it
            is counted in every epoch.
        token_prediction: Optional ``(E, N, T)`` predicted token labels.
        token_label: Optional ``(N, T)`` given token labels; with ``token_prediction`` it
            decides correctness exactly, otherwise a token is right when its margin > 0.
        example_id: Optional ``(N,)`` ids of the sequences (default ``0..N-1``).
        epochs: Epoch numbers of the E rows (default ``1..E``).
        confidence_threshold: Region boundary, as in :func:`compute_dynamics`.
        variability_threshold: Region boundary, as in :func:`compute_dynamics`.
        chunk_size: Sequences per chunk.

    Returns:
        DataFrame with one row per counted token: ``example_id``, ``position``, ``label``
        (when given), then the columns of :func:`compute_dynamics` except the loss-rank
        ones (indexed by a plain ``RangeIndex``).
    """
    tp_m = _EpochMatrix(token_true_prob, "token_true_prob", trailing=1)
    mg_m = _EpochMatrix(token_margin, "token_margin", trailing=1)
    pred_m = (
        None
        if token_prediction is None
        else _EpochMatrix(token_prediction, "token_prediction", trailing=1)
    )
    num_epochs, num_examples, length = tp_m.shape
    for matrix in (mg_m, pred_m):
        if matrix is not None and matrix.shape != tp_m.shape:
            raise ValueError(
                f"{matrix.name} has shape {matrix.shape} but token_true_prob has {tp_m.shape}."
            )
    mask = np.asarray(token_mask, dtype=bool)
    if mask.ndim == 3:
        mask = mask.all(axis=0)
    if mask.shape != (num_examples, length):
        raise ValueError(
            f"token_mask must have shape (N, T) = {(num_examples, length)}, got {mask.shape}."
        )
    labels = None if token_label is None else np.asarray(token_label)
    if labels is not None and labels.shape != (num_examples, length):
        raise ValueError(
            f"token_label must have shape (N, T) = {(num_examples, length)}, got {labels.shape}."
        )
    ids = np.arange(num_examples, dtype=np.int64) if example_id is None else np.asarray(example_id)
    epoch_numbers = np.arange(1, num_epochs + 1) if epochs is None else np.asarray(epochs)

    step = _chunk_columns(num_epochs, chunk_size, per_column=max(1, length))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, num_examples, step):
        stop = min(start + step, num_examples)
        block_mask = mask[start:stop].reshape(-1)
        if not block_mask.any():
            continue
        tp = _token_block(tp_m, start, stop, block_mask)
        mg = _token_block(mg_m, start, stop, block_mask)
        pred = None if pred_m is None else _token_block(pred_m, start, stop, block_mask)
        if pred is not None and labels is not None:
            given = labels[start:stop].reshape(-1)[block_mask]
            correct = (pred == given[None, :]) & (pred >= 0)  # -1: no prediction
        else:
            correct = mg > 0
        stats = _block_stats(tp, mg, correct, pred)
        rows, cols = np.nonzero(mask[start:stop])
        stats["example_id"] = ids[start:stop][rows]
        stats["position"] = cols.astype(np.int64)
        if labels is not None:
            stats["label"] = labels[start:stop][rows, cols]
        for key, value in stats.items():
            parts.setdefault(key, []).append(value)
        for matrix in (tp_m, mg_m, pred_m):
            if matrix is not None:
                matrix.release()

    columns = {k: np.concatenate(v) for k, v in parts.items()}
    total = int(mask.sum())
    if not columns:
        columns = {
            "example_id": np.empty(0, np.int64),
            "position": np.empty(0, np.int64),
            "confidence": np.empty(0),
            "variability": np.empty(0),
        }
    head = {"example_id": columns.pop("example_id"), "position": columns.pop("position")}
    given = columns.pop("label", None)
    frame = _assemble(
        columns,
        total,
        label=given,
        example_id=None,
        epoch_numbers=epoch_numbers,
        confidence_threshold=confidence_threshold,
        variability_threshold=variability_threshold,
    ).reset_index(drop=True)
    for pos, (name, values) in enumerate(head.items()):
        frame.insert(pos, name, values)
    return frame


def _token_block(matrix: _EpochMatrix, start: int, stop: int, keep: np.ndarray) -> np.ndarray:
    """``(E, n_counted)`` values of the counted tokens of sequences ``start:stop``."""
    block = matrix.chunk(start, stop)
    return block.reshape(matrix.num_epochs, -1)[:, keep]


def mislabel_score(dyn: pd.DataFrame, *, method: str = DEFAULT_METHOD) -> pd.Series:
    """Score how likely each example's label is wrong (higher = more likely).

    Args:
        dyn: Output of :func:`compute_dynamics` or :func:`compute_token_dynamics`.
        method: One of ``MISLABEL_METHODS`` (``"aum_cl"``, ``"aum"``, ``"confidence"``,
            ``"correctness"``, ``"hard_to_learn"``). ``"aum_cl"`` and ``"aum"`` rank by the
            same score; they differ in the flag rule only.

    Returns:
        Series aligned with ``dyn``.
    """
    if method not in MISLABEL_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(MISLABEL_METHODS)}.")
    needed = {"aum": ["aum"], "confidence": ["confidence"], "correctness": ["correctness", "aum"]}
    needed["hard_to_learn"] = ["confidence", "variability"]
    needed["aum_cl"] = ["aum"]
    missing = [c for c in needed[method] if c not in dyn.columns]
    if missing:
        raise ValueError(
            f"dyn lacks column(s) {missing} needed by method={method!r}; pass the output of "
            "compute_dynamics() (or run.dynamics())."
        )
    if method in ("aum", "aum_cl"):
        score = -dyn["aum"]
    elif method == "confidence":
        score = 1.0 - dyn["confidence"]
    elif method == "correctness":
        # AUM in [-1, 1] scaled below one correctness step breaks ties.
        score = (1.0 - dyn["correctness"]) - dyn["aum"] * 1e-3
    else:
        score = 1.0 - dyn["confidence"] - dyn["variability"]
    return score.rename("mislabel_score")


def estimate_num_label_errors(dyn: pd.DataFrame) -> int:
    """Estimate how many given labels are wrong: confident learning on training dynamics.

    Confident learning (Northcutt, Jiang and Chuang, 2021, "Confident Learning: Estimating
    Uncertainty in Dataset Labels", JAIR 70) counts an example labelled ``i`` in the cell
    ``(i, j)`` of the *confident joint* when its probability of ``j`` reaches the per-class
    threshold ``t_j`` = the mean probability of ``j`` over the examples labelled ``j``; the
    rows are then calibrated to the class sizes, and the off-diagonal sum estimates the
    number of label errors. cleanlab computes it on out-of-sample probabilities from
    cross-validation (K trainings). Here the probabilities averaged over the training epochs
    of one run stand in for them, read from the dynamics frame:

    - ``t_j`` = mean ``confidence`` (epoch-averaged probability of the given label) of the
      examples labelled ``j``;
    - an example labelled ``i`` is off-diagonal when the model ever predicted another class
      (``suggested_label`` ``j >= 0``), its epoch-averaged largest other probability
      (``confidence - aum``) reaches ``t_j``, and the given class does not win: its own
      ``confidence`` is below ``t_i`` or below that other probability. Only the given and
      the largest other probability are recorded, so the other class is the one the model
      keeps predicting instead (``suggested_label``);
    - it is on the diagonal when ``confidence >= t_i`` and it is not off-diagonal; examples
      in neither are not counted, and each row ``i`` is scaled by
      ``n_i / (counted examples labelled i)`` (the calibration step).
    - rows with a negative label (ignored positions, examples never seen) are left out.

    Args:
        dyn: Output of :func:`compute_dynamics` (or :func:`compute_token_dynamics`) with the
            ``label`` column (``compute_dynamics(..., label=y)``, ``run.dynamics()``,
            ``recorder.dynamics()``) and predictions recorded.

    Returns:
        The estimated number of wrong labels (rounded), between 0 and ``len(dyn)``.

    Example:
        >>> import pandas as pd
        >>> dyn = pd.DataFrame({
        ...     "label": [0, 0, 0, 1, 1, 1],
        ...     "confidence": [0.9, 0.9, 0.3, 0.8, 0.8, 0.2],
        ...     "aum": [0.8, 0.8, -0.4, 0.6, 0.6, -0.6],
        ...     "suggested_label": [-1, -1, 1, -1, -1, 0],
        ... })
        >>> estimate_num_label_errors(dyn)  # t = [0.7, 0.6]; rows 2 and 5 are off-diagonal
        2
    """
    return _confident_joint(dyn).num_errors


class _Joint(NamedTuple):
    """The off-diagonal of the calibrated confident joint, kept sparse (C can be a vocabulary).

    ``row_cell`` (N,) is each row's cell key ``given * C + suggested`` (-1: no suggested
    class that anybody carries as a given label); ``cells`` the sorted keys of the non-empty
    off-diagonal cells, ``counts`` their calibrated counts and ``share`` each count over the
    size of its given class.
    """

    row_cell: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    share: np.ndarray
    num_rows: int

    @property
    def num_errors(self) -> int:
        return int(min(round(float(self.counts.sum())), self.num_rows))


def _confident_joint(dyn: pd.DataFrame) -> _Joint:
    """The calibrated confident joint of :func:`estimate_num_label_errors`, cell by cell."""
    missing = [c for c in ("label", "confidence", "aum", "suggested_label") if c not in dyn.columns]
    if missing:
        raise ValueError(
            f"dyn lacks column(s) {missing} needed to estimate the number of label errors; "
            "pass label= (and predictions) to compute_dynamics, or use run.dynamics() / "
            "InFlightRecorder.dynamics()."
        )
    label = dyn["label"].to_numpy()
    if label.dtype.kind not in "iu":
        raise ValueError(
            f"The label column must hold integer class ids without gaps, got dtype "
            f"{dyn['label'].dtype}: map class names to ids (and drop rows without a label) "
            "before estimating the number of label errors."
        )
    labelled = label >= 0  # negative labels are ignored positions (or unseen examples)
    num_rows = len(dyn)
    confidence = dyn["confidence"].to_numpy(dtype=np.float64)[labelled]
    other = confidence - dyn["aum"].to_numpy(dtype=np.float64)[labelled]
    suggested_label = dyn["suggested_label"].to_numpy()[labelled]
    classes, given = np.unique(label[labelled], return_inverse=True)
    num_classes = len(classes)
    if num_classes == 0:
        empty = np.zeros(0)
        row_cell = np.full(num_rows, -1, np.int64)
        return _Joint(row_cell, empty.astype(np.int64), empty, empty, num_rows)
    per_class = np.bincount(given, minlength=num_classes)
    finite = np.isfinite(confidence)
    sums = np.bincount(given[finite], weights=confidence[finite], minlength=num_classes)
    counts = np.bincount(given[finite], minlength=num_classes)
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    # Suggested labels that nobody carries as a given label have no threshold: not counted.
    position = np.minimum(np.searchsorted(classes, suggested_label), num_classes - 1)
    known = (suggested_label >= 0) & (classes[position] == suggested_label)
    row_cell = np.full(num_rows, -1, np.int64)
    row_cell[labelled] = np.where(known, given.astype(np.int64) * num_classes + position, -1)
    t_other = np.where(known, thresholds[position], np.inf)
    t_given = thresholds[given]
    with np.errstate(invalid="ignore"):
        off = known & (other >= t_other) & ((confidence < t_given) | (other > confidence))
        counted = off | (confidence >= t_given)
    cells, in_cell = np.unique(row_cell[labelled][off], return_counts=True)
    counted_rows = np.bincount(given[counted], minlength=num_classes)
    scale = np.where(counted_rows > 0, per_class / np.maximum(counted_rows, 1), 0.0)
    row_of_cell = cells // num_classes
    counts = in_cell * scale[row_of_cell]
    return _Joint(row_cell, cells, counts, counts / per_class[row_of_cell], num_rows)


def _lowest(values: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` lowest finite ``values`` where ``among`` (ties at the boundary in)."""
    candidates = among & np.isfinite(values)
    pool = values[candidates]
    if k <= 0 or pool.size == 0:
        return np.zeros(len(values), bool)
    boundary = np.partition(pool, min(k, pool.size) - 1)[min(k, pool.size) - 1]
    return candidates & (values <= boundary)


def default_flags(dyn: pd.DataFrame) -> pd.Series:
    """What :func:`likely_mislabeled` flags by default, as a boolean Series aligned with ``dyn``.

    Args:
        dyn: Output of :func:`compute_dynamics` / :func:`compute_token_dynamics`.

    Returns:
        True for the rows the default rule (``method=DEFAULT_METHOD``) flags, in ``dyn``'s
        row order (by position, so a repeated index label is no problem).
    """
    mislabel_score(dyn, method=DEFAULT_METHOD)  # the same column checks
    return _flags(dyn, DEFAULT_METHOD, None)


def _has_class_ids(dyn: pd.DataFrame) -> bool:
    """Whether ``dyn`` has what the confident joint needs: rows, integer labels, predictions."""
    needed = ("label", "confidence", "suggested_label", "aum")
    if not all(c in dyn.columns for c in needed) or len(dyn) == 0:
        return False
    return dyn["label"].to_numpy().dtype.kind in "iu"


def _aum_cl_flags(dyn: pd.DataFrame, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``"aum_cl"`` flags at ``cut``, and which rows lie in a concentrated cell.

    Without integer labels or predictions: the AUM cut alone, and no concentrated rows.
    """
    aum = dyn["aum"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        flags = aum < cut
    if not _has_class_ids(dyn):
        return flags, np.zeros(len(dyn), bool)
    joint = _confident_joint(dyn)
    # Concentrated cells (systematic flips from one class to another): most of the cell is
    # flipped, so the cut moves to where the other class wins on average (``flags`` already
    # holds every row below a higher threshold=).
    dense = joint.share >= CONCENTRATED_CELL_SHARE
    concentrated = np.isin(joint.row_cell, joint.cells[dense])
    with np.errstate(invalid="ignore"):
        flags |= concentrated & (aum < CONCENTRATED_CELL_AUM_THRESHOLD)
    # The other cells' count: down the AUM ranking, outside the concentrated cells, among rows
    # with a given label (a concentrated cell's count is never spent elsewhere).
    outside = ~concentrated & (dyn["label"].to_numpy() >= 0)
    budget = round(float(joint.counts[~dense].sum())) - int((flags & outside).sum())
    flags |= _lowest(aum, outside & ~flags, budget)
    return flags, concentrated


def _flags(dyn: pd.DataFrame, method: str, threshold: float | None) -> pd.Series:
    if method == "aum_cl":
        cut = DEFAULT_AUM_THRESHOLD if threshold is None else threshold
        return pd.Series(_aum_cl_flags(dyn, cut)[0], index=dyn.index)
    if method == "aum":
        return dyn["aum"] < (DEFAULT_AUM_THRESHOLD if threshold is None else threshold)
    if method == "confidence":
        return dyn["confidence"] < (0.5 if threshold is None else threshold)
    if method == "correctness":
        return dyn["correctness"] < (0.5 if threshold is None else threshold)
    if threshold is not None:
        return mislabel_score(dyn, method=method) > threshold
    return dyn["region"] == "hard-to-learn"


def likely_mislabeled(
    dyn: pd.DataFrame,
    k: int | None = None,
    *,
    method: str = DEFAULT_METHOD,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Rank examples (or tokens) whose given label the model keeps contradicting.

    The default ``method="aum_cl"`` ranks by area under the margin (Pleiss et al., 2020) and
    flags every example with ``aum < -0.2`` and, when confident learning (Northcutt et al.,
    2021; :func:`estimate_num_label_errors`) estimates more label errors than that cut-off
    catches, more up to the estimated count. The fixed cut-off under-flags when the noise is
    concentrated in class pairs (the model partly learns the systematic flips, so their
    margins are less negative); the class-conditional count of confident learning adapts to
    that. Where one cell of the calibrated confident joint (given class ``i``, suggested
    class ``j``) holds at least ``CONCENTRATED_CELL_SHARE`` (10%) of class ``i``, most rows
    of that cell are flipped labels, so each of them is flagged as soon as the other class
    wins on average: ``aum < 0`` (``CONCENTRATED_CELL_AUM_THRESHOLD``) instead of -0.2. The
    count of the other cells goes down the AUM ranking outside such cells. So the flagged
    rows are not always the lowest AUMs overall. Without integer labels in a ``label``
    column (e.g. ``InFlightRecorder.dynamics()`` without ``label=``, or class names) or
    without predictions (``suggested_label``) it reduces to the AUM cut-off. The
    count and the cut in concentrated cells were chosen on dev data
    (``benchmarks/dev_mislabeled_rules.py``), not on the benchmark's seeds; ``method="aum"``
    is the cut-off alone.

    Args:
        dyn: Output of :func:`compute_dynamics` / :func:`compute_token_dynamics`.
        k: Return the ``k`` highest-scoring rows whether flagged or not. Default ``None``:
            return every flagged row (the method's flag rule, see ``MISLABEL_METHODS``).
        method: Score to rank by, one of ``MISLABEL_METHODS``.
        threshold: Override the flag rule's cut-off (e.g. ``aum < threshold``; for
            ``"aum_cl"`` the AUM part of the rule: ``aum < threshold`` outside concentrated
            cells, ``aum < max(threshold, 0)`` inside them).

    Returns:
        ``dyn`` rows sorted by ``mislabel_score`` (descending), with the columns
        ``mislabel_score`` and ``flagged`` first, then ``label`` / ``suggested_label`` /
        ``suggested_label_share`` (the label the model keeps predicting instead, when
        predictions were recorded), then the other dynamics.
    """
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 or None, got {k}.")
    score = mislabel_score(dyn, method=method)
    flagged = _flags(dyn, method, threshold)
    table = dyn.assign(mislabel_score=score, flagged=flagged.to_numpy())
    first = [
        c
        for c in (
            "example_id",
            "position",
            "mislabel_score",
            "flagged",
            "label",
            "suggested_label",
            "suggested_label_share",
        )
        if c in table.columns
    ]
    table = table[first + [c for c in table.columns if c not in first]]
    table = table.sort_values("mislabel_score", ascending=False, kind="stable")
    if k is None:
        return table[table["flagged"]]
    return table.head(k)


def run_dynamics(
    run: Any,
    *,
    tokens: bool = False,
    epochs: Sequence[int] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Dynamics of a run folder's recorded epochs, read memory-mapped, never stacked.

    Args:
        run: A :class:`~keras_erranalysis.run.Run` (``load_run(log_dir)``).
        tokens: For sequence runs, one row per counted token (:func:`compute_token_dynamics`)
            instead of one row per sequence.
        epochs: Epochs to use (default: all recorded).
        **options: Passed to :func:`compute_dynamics` / :func:`compute_token_dynamics`
            (e.g. ``hard_k``, ``confidence_threshold``).

    Returns:
        The dynamics DataFrame.
    """
    chosen = list(run.epochs if epochs is None else epochs)
    if not chosen:
        raise ValueError(
            "The run has no recorded epochs yet: train with the ErrorAnalysis callback first."
        )
    last = chosen[-1]
    sequence = run.meta(last)["task"] == "sequence"
    ids = np.asarray(run.array("example_id", last))
    first_ids = np.asarray(run.array("example_id", chosen[0]))
    if first_ids.shape != ids.shape or not np.array_equal(first_ids, ids):
        raise ValueError(
            f"Epochs {chosen[0]} and {last} of the run hold different examples; dynamics need "
            "the same examples every epoch. Pass epochs=[...] that analysed the same data."
        )

    def columns(name: str) -> list[np.ndarray]:
        return run.arrays(name, chosen)

    if tokens:
        if not sequence:
            raise ValueError("tokens=True needs a sequence run; this run is a classifier.")
        return compute_token_dynamics(
            columns("token_true_prob"),
            columns("token_margin"),
            np.asarray(run.array("token_mask", last)),
            columns("prediction"),
            np.asarray(run.array("label", last)),
            example_id=ids,
            epochs=chosen,
            **options,
        )
    return compute_dynamics(
        columns("true_prob"),
        columns("margin"),
        columns("correct"),
        loss=columns("loss"),
        prediction=None if sequence else columns("prediction"),
        label=None if sequence else np.asarray(run.array("label", last)),
        example_id=ids,
        epochs=chosen,
        **options,
    )

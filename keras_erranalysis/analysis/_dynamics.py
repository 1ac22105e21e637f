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
  * otherwise ``"easy-to-learn"`` when ``confidence >= confidence_threshold`` (default 0.5)
    and the example was right at some epoch: one never right is never easy-to-learn;
  * otherwise ``"hard-to-learn"`` (low confidence, low variability: the model consistently
    disagrees with the label; this is where label errors concentrate).

  For sequences the histories are example-level throughout (``_sequence_dynamics``): the
  probability and margin of the weakest counted token, exact-match correctness, and the
  per-token probability of the whole label sequence (``sequence_confidence``), which ranks
  likely label errors.

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
  :func:`likely_mislabeled` (``method="aum_fence"``) flags the AUMs below -0.2 or below the
  Tukey fence of all AUMs, and down the AUM ranking to that count when these flag fewer;
  with 3 or more classes, where the joint concentrates (one other class takes at least 10%
  of a class, as under systematic flips between two classes), most of that cell is flipped,
  and every row of it whose AUM is below 0 is flagged.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")


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
        # Epochs whose numbers are defined: 0 for an example whose loss was never finite.
        "finite_epochs": np.isfinite(tp).sum(axis=0).astype(np.int64),
        "first_nonfinite_epoch": np.where(
            np.isfinite(tp).all(axis=0), -1, (~np.isfinite(tp)).argmax(axis=0)
        ).astype(np.int64),
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
    never_learned: np.ndarray | None = None,
) -> pd.Categorical:
    easy = confidence >= confidence_threshold
    if never_learned is not None:  # never right at any epoch: never easy (ties at 0.5)
        easy &= ~never_learned
    codes = np.where(variability >= variability_threshold, 1, np.where(easy, 0, 2))
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
    sequence_prob: Any = None,
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
        sequence_prob: For sequences, the per-token probability of the whole label
            sequence per epoch (``sequence_probabilities``); gives ``sequence_confidence``,
            its mean over epochs, which ``likely_mislabeled`` then ranks by. The other
            histories of a sequence are example-level too: ``true_prob`` and ``margin`` of
            its weakest counted token and ``correct`` for an exact match (what the pass
            records).
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
        never), ``final_correct``, ``hard_epochs``, ``hard_streak``, ``finite_epochs``
        (epochs with a finite probability) and ``first_nonfinite_epoch`` (-1 if none), plus
        ``loss_mean``
        when ``loss`` is given, the prediction columns when ``prediction`` is given, and
        ``label`` when given, and ``sequence_confidence`` when ``sequence_prob`` is given.
        ``region`` is never ``"easy-to-learn"`` for an example never right at any epoch.

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
    if sequence_prob is not None:
        matrices["sequence_prob"] = _EpochMatrix(sequence_prob, "sequence_prob")
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
        if "sequence_prob" in blocks:
            stats["sequence_confidence"] = blocks["sequence_prob"].astype(np.float64).mean(axis=0)
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
    for name in ("first_learned_epoch", "first_nonfinite_epoch"):  # positions -> numbers
        first = columns.get(name)
        if first is not None:
            seen = first >= 0
            first[seen] = epoch_numbers[first[seen]]
    order = [
        "confidence",
        "variability",
        "correctness",
        "region",
        "sequence_confidence",
        "aum",
        "forgetting_events",
        "never_learned",
        "first_learned_epoch",
        "final_correct",
        "hard_epochs",
        "hard_streak",
        "finite_epochs",
        "first_nonfinite_epoch",
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
                columns.get("never_learned"),
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

"""Likely label errors from training dynamics: scores, the estimated count and the flag rule."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

#: Scores understood by :func:`likely_mislabeled`: name -> what it ranks and flags.
MISLABEL_METHODS = {
    "aum_fence": (
        "low area under the margin (flagged: aum < threshold, default -0.2, or 0.1 when the "
        "model fits >= 95% of the given labels at its last epoch; or below the "
        "Tukey fence Q1 - 1.5 IQR of all AUMs, or among the lowest AUMs up to "
        "estimate_num_label_errors(dyn); with 3 or more given classes, where one other class "
        "holds >= 10% of a class, that cell's rows with aum < 0, as 'aum_cl')"
    ),
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
    "sequence": (
        "for sequences (the default when dyn has sequence_confidence): low per-token "
        "probability of the whole label sequence, averaged over epochs; score = 1 - "
        "sequence_confidence (flagged: sequence_confidence < threshold, default 0.075)"
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
# Dec 2026 (issue 16): "aum_fence" replaced "aum_cl" as the default, chosen on a development
# suite of real data (benchmarks/dev_flag_suite.py, DEV part: breast_cancer, first names,
# digits, Brown genres; seeds 0-2) and then reported once on its held-out part (seeds 3-4 and
# the fortunes data set). Two changes: (1) on binary tasks no cell is "concentrated": every
# random flip of a class lands in its one other class, so the cell always passed 10% and the
# aum < 0 cut flagged clean late-learned examples (breast_cancer, symmetric: F1 .842 -> .919,
# 1.23 -> 1.01 flagged per flip); (2) the Tukey fence: a model that memorises its training
# labels (first names: 97% of noisy labels fitted) raises the flips' AUM above -0.2 and the
# confident-learning count on in-sample probabilities drops to 4-7% of the flips; AUMs far
# below the bulk of the distribution are flagged whatever their value (names, symmetric:
# F1 .352 -> .512). Unchanged on digits (no AUM below the fence that -0.2 misses).
DEFAULT_METHOD = "aum_fence"


# The fence is Tukey's usual outlier fence, Q1 - 1.5 IQR of all AUMs; not fitted. On DEV the
# fence per class instead of over all rows was better on first names with one-way noise
# (.349 -> .556) but worse on breast_cancer (.847 -> .785) and digits (.910 -> .879).
TUKEY_FENCE_FACTOR = 1.5


# A model that fits at least this share of the given labels at its last recorded epoch has
# memorised most flips: their margins rise over the epochs, and the mean margin of a flipped
# label ends up near or above 0. The default then cuts at MEMORISED_AUM_THRESHOLD instead of
# -0.2. On DEV the fit was 0.81-0.89 (digits, breast_cancer: unchanged) or 0.965-0.99 (first
# names, Brown genres); any share from 0.9 to 0.96 splits them the same way. Cut 0.1 against
# 0 on the memorising runs: Brown pairs F1 .641 -> .698, symmetric .753 -> .768; names
# one-way .364 -> .393, symmetric .512 -> .515 (fence and count included; -0.2 gave .431,
# .663, .349, .512).
MEMORISED_FIT = 0.95
MEMORISED_AUM_THRESHOLD = 0.1

#: The default method for sequence dynamics (``dyn`` with a ``sequence_confidence`` column).
SEQUENCE_METHOD = "sequence"


# Chosen on the dev seeds 0 and 1 of benchmarks/bench_seq_mislabeled.py (the demo's CMUdict
# training words, 5% of pronunciations swapped, 8 epochs); the held-out seeds 2-4 were scored
# once, afterwards (docs/benchmarks.md). Mean dev F1 by cut: 0.05 -> 0.963, 0.075 -> 0.980,
# 0.1 -> 0.975, 0.15 -> 0.952, 0.2 -> 0.920 (precision 0.98 at 0.075, 0.85 at 0.2).
DEFAULT_SEQUENCE_THRESHOLD = 0.075


def _method(dyn: pd.DataFrame, method: str | None) -> str:
    """The method asked for, or the default for these dynamics (sequence or not)."""
    if method is not None:
        return method
    return SEQUENCE_METHOD if "sequence_confidence" in dyn.columns else DEFAULT_METHOD


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


def mislabel_score(dyn: pd.DataFrame, *, method: str | None = None) -> pd.Series:
    """Score how likely each example's label is wrong (higher = more likely).

    Args:
        dyn: Output of :func:`compute_dynamics` or :func:`compute_token_dynamics`.
        method: One of ``MISLABEL_METHODS`` (``"aum_cl"``, ``"aum"``, ``"confidence"``,
            ``"correctness"``, ``"hard_to_learn"``, ``"sequence"``). ``"aum_cl"`` and
            ``"aum"`` rank by the same score; they differ in the flag rule only. Default:
            ``"sequence"`` for sequence dynamics (a ``sequence_confidence`` column),
            ``"aum_cl"`` otherwise.

    Returns:
        Series aligned with ``dyn``.

    Example:
        >>> import pandas as pd
        >>> from keras_erranalysis.analysis import mislabel_score
        >>> dyn = pd.DataFrame({"aum": [0.7, -0.5, 0.1]})
        >>> mislabel_score(dyn).tolist()
        [-0.7, 0.5, -0.1]
    """
    method = _method(dyn, method)
    if method not in MISLABEL_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(MISLABEL_METHODS)}.")
    needed = {"aum": ["aum"], "confidence": ["confidence"], "correctness": ["correctness", "aum"]}
    needed["hard_to_learn"] = ["confidence", "variability"]
    needed["aum_cl"] = needed["aum_fence"] = ["aum"]
    needed["sequence"] = ["sequence_confidence"]
    missing = [c for c in needed[method] if c not in dyn.columns]
    if missing:
        hint = (
            " (sequence runs: run.dynamics(), or compute_dynamics(..., sequence_prob=...))"
            if method == "sequence"
            else ""
        )
        raise ValueError(
            f"dyn lacks column(s) {missing} needed by method={method!r}; pass the output of "
            f"compute_dynamics() (or run.dynamics()){hint}."
        )
    if method in ("aum", "aum_cl", "aum_fence"):
        score = -dyn["aum"]
    elif method == "confidence":
        score = 1.0 - dyn["confidence"]
    elif method == "correctness":
        # AUM in [-1, 1] scaled below one correctness step breaks ties.
        score = (1.0 - dyn["correctness"]) - dyn["aum"] * 1e-3
    elif method == "sequence":
        score = 1.0 - dyn["sequence_confidence"]
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


def _has_class_ids(dyn: pd.DataFrame) -> bool:
    """Whether ``dyn`` has what the confident joint needs: rows, integer labels, predictions."""
    needed = ("label", "confidence", "suggested_label", "aum")
    if not all(c in dyn.columns for c in needed) or len(dyn) == 0:
        return False
    return dyn["label"].to_numpy().dtype.kind in "iu"


def _aum_cl_flags(
    dyn: pd.DataFrame, cut: float, *, cells_from_classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The ``"aum_cl"`` flags at ``cut``, and which rows lie in a concentrated cell.

    Concentrated cells are looked for only when at least ``cells_from_classes`` classes are
    given labels (``"aum_fence"``: 3). Without integer labels or predictions:
    the AUM cut alone, and no concentrated rows.
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
    label = dyn["label"].to_numpy()
    num_given = np.unique(label[label >= 0]).size
    dense = joint.share >= CONCENTRATED_CELL_SHARE
    if num_given < cells_from_classes:
        dense[:] = False
    concentrated = np.isin(joint.row_cell, joint.cells[dense])
    with np.errstate(invalid="ignore"):
        flags |= concentrated & (aum < CONCENTRATED_CELL_AUM_THRESHOLD)
    # The other cells' count: down the AUM ranking, outside the concentrated cells, among rows
    # with a given label (a concentrated cell's count is never spent elsewhere).
    outside = ~concentrated & (dyn["label"].to_numpy() >= 0)
    budget = round(float(joint.counts[~dense].sum())) - int((flags & outside).sum())
    flags |= _lowest(aum, outside & ~flags, budget)
    return flags, concentrated


def tukey_fence(values: np.ndarray, factor: float = TUKEY_FENCE_FACTOR) -> float:
    """``Q1 - factor * IQR`` of the finite ``values`` (-inf when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return -np.inf
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    return float(q1 - factor * (q3 - q1))


def _aum_fence_flags(dyn: pd.DataFrame, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``"aum_fence"`` flags at ``cut``, and which rows lie in a concentrated cell."""
    flags, concentrated = _aum_cl_flags(dyn, cut, cells_from_classes=3)
    aum = dyn["aum"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        flags = flags | (aum < tukey_fence(aum))
    return flags, concentrated


def default_aum_cut(dyn: pd.DataFrame) -> float:
    """The default AUM cut: -0.2, or 0.1 when the model fits >= 95% of the given labels.

    The fit is the share of ``final_correct`` (the last recorded epoch) among rows with a
    given label; without that column the cut is -0.2.
    """
    if "final_correct" not in dyn.columns or len(dyn) == 0:
        return DEFAULT_AUM_THRESHOLD
    final = dyn["final_correct"].to_numpy(dtype=bool)
    if "label" in dyn.columns and dyn["label"].to_numpy().dtype.kind in "iu":
        final = final[dyn["label"].to_numpy() >= 0]
    if final.size and final.mean() >= MEMORISED_FIT:
        return MEMORISED_AUM_THRESHOLD
    return DEFAULT_AUM_THRESHOLD


def default_flags(dyn: pd.DataFrame, cut: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What the default method flags, and the rows in concentrated cells.

    ``cut`` is the AUM cut (default: :func:`default_aum_cut`).
    """
    return _aum_fence_flags(dyn, default_aum_cut(dyn) if cut is None else cut)


def _flags(dyn: pd.DataFrame, method: str, threshold: float | None) -> pd.Series:
    if method == "aum_fence":
        return pd.Series(default_flags(dyn, threshold)[0], index=dyn.index)
    if method == "aum_cl":
        cut = DEFAULT_AUM_THRESHOLD if threshold is None else threshold
        return pd.Series(_aum_cl_flags(dyn, cut)[0], index=dyn.index)
    if method == "aum":
        return dyn["aum"] < (DEFAULT_AUM_THRESHOLD if threshold is None else threshold)
    if method == "confidence":
        return dyn["confidence"] < (0.5 if threshold is None else threshold)
    if method == "correctness":
        return dyn["correctness"] < (0.5 if threshold is None else threshold)
    if method == "sequence":
        cut = DEFAULT_SEQUENCE_THRESHOLD if threshold is None else threshold
        return dyn["sequence_confidence"] < cut
    if threshold is not None:
        return mislabel_score(dyn, method=method) > threshold
    return dyn["region"] == "hard-to-learn"


def _check_defined(dyn: pd.DataFrame) -> None:
    """Raises (none defined) or warns (most undefined) when the dynamics are not finite.

    A diverged run (every loss NaN from some epoch on) has no margins to rank: an empty
    table would read as "no label errors". Rows with some finite epochs keep the mean of
    those epochs.
    """
    if "finite_epochs" not in dyn or len(dyn) == 0:
        return
    never = dyn["finite_epochs"].to_numpy() == 0
    if not never.any():
        return
    first = dyn["first_nonfinite_epoch"].to_numpy()
    what = (
        f"{int(never.sum())} of {len(dyn)} examples never had a finite loss (NaN or inf from "
        f"epoch {int(first[first >= 0].min())} on): training diverged or the model outputs "
        "NaN for them"
    )
    if never.all():
        raise ValueError(
            f"{what}. There are no margins to rank, so no label errors can be named: fix the "
            "non-finite losses first (see the report's nonfinite column)."
        )
    if never.mean() > 0.5:
        warnings.warn(f"{what}; they are left out of the ranking.", RuntimeWarning, stacklevel=3)


def likely_mislabeled(
    dyn: pd.DataFrame,
    k: int | None = None,
    *,
    method: str | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Rank examples (or tokens) whose given label the model keeps contradicting.

    The default ``method="aum_fence"`` ranks by area under the margin (Pleiss et al., 2020)
    and flags the union of:

    - every example with ``aum < -0.2`` (``threshold``), or ``aum < 0.1`` when the model
      fits at least 95% of the given labels at its last epoch (``final_correct``): it has
      memorised most flips, whose margins then end near or above 0;
    - every AUM below the Tukey fence ``Q1 - 1.5 IQR`` of all AUMs (``tukey_fence``): a
      model that memorises its training labels raises the flips' AUM above any fixed cut,
      but they stay far below the bulk;
    - when confident learning (Northcutt et al., 2021; :func:`estimate_num_label_errors`)
      estimates more label errors than that, more down the AUM ranking up to the count;
    - with 3 or more given classes, where one cell of the calibrated confident joint (given
      class ``i``, suggested class ``j``) holds at least ``CONCENTRATED_CELL_SHARE`` (10%)
      of class ``i`` (systematic flips between two classes), that cell's rows with
      ``aum < 0`` (``CONCENTRATED_CELL_AUM_THRESHOLD``); the count of the other cells goes
      down the AUM ranking outside such cells. On two classes every flip of a class lands
      in the one other class, so no cell is called concentrated.

    So the flagged rows are not always the lowest AUMs overall. Without integer labels in a
    ``label`` column (e.g. ``InFlightRecorder.dynamics()`` without ``label=``, or class
    names) or without predictions (``suggested_label``) it reduces to the cut and the fence.
    The rule was chosen on the development part of ``benchmarks/dev_flag_suite.py`` (real
    data, planted and natural noise) and reported once on its held-out part (see the docs'
    Benchmarks page). ``method="aum_cl"`` is the default before Dec 2026 (concentrated cells
    on binary tasks too, no fence); ``method="aum"`` is the cut-off alone.

    Sequence dynamics (``run.dynamics()`` of a sequence run: a ``sequence_confidence``
    column) default to ``method="sequence"``: ranked by the per-token probability of the
    whole label sequence averaged over epochs, flagged below
    ``DEFAULT_SEQUENCE_THRESHOLD`` (0.075). A flagged sequence is never easy-to-learn (its
    weakest token's probability is at most the per-token mean).

    Args:
        dyn: Output of :func:`compute_dynamics` / :func:`compute_token_dynamics`.
        k: Return the ``k`` highest-scoring rows whether flagged or not. Default ``None``:
            return every flagged row (the method's flag rule, see ``MISLABEL_METHODS``).
        method: Score to rank by, one of ``MISLABEL_METHODS``. Default: ``"sequence"`` for
            sequence dynamics, ``"aum_fence"`` otherwise.
        threshold: Override the flag rule's cut-off (e.g. ``aum < threshold``; for
            ``"aum_fence"`` and ``"aum_cl"`` the AUM part of the rule, the fence and the count
            stay: ``aum < threshold`` outside concentrated cells, ``aum < max(threshold, 0)``
            inside them).

    Returns:
        ``dyn`` rows sorted by ``mislabel_score`` (descending), with the columns
        ``mislabel_score`` and ``flagged`` first, then ``label`` / ``suggested_label`` /
        ``suggested_label_share`` (the label the model keeps predicting instead, when
        predictions were recorded), then the other dynamics.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import compute_dynamics, likely_mislabeled
        >>> true_prob = np.array([[0.9, 0.2, 0.6], [0.95, 0.1, 0.7], [0.97, 0.1, 0.8]])
        >>> other = np.array([[0.05, 0.7, 0.3], [0.03, 0.85, 0.2], [0.02, 0.9, 0.1]])
        >>> dyn = compute_dynamics(true_prob, true_prob - other, true_prob > other,
        ...                        label=np.array([0, 1, 2]))
        >>> likely_mislabeled(dyn)[["mislabel_score", "flagged", "label"]].round(3)
                    mislabel_score  flagged  label
        example_id
        1                    0.683     True      1
        >>> likely_mislabeled(dyn, k=2).index.tolist()  # the k lowest AUMs, flagged or not
        [1, 2]
    """
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 or None, got {k}.")
    _check_defined(dyn)
    method = _method(dyn, method)
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

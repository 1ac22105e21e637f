"""Analysis: numpy, pandas and scipy over the pass's arrays; no Keras, no TensorFlow.

Ranking the hardest examples, metrics per class and per sequence, training dynamics and
likely label errors, wrong-vs-right feature statistics and slices, nearest neighbours in
embedding space, data health (duplicates, leakage, label conflicts, class balance,
tokenisation, outliers). Every function takes arrays or DataFrames and returns arrays or
DataFrames, so each can be called by hand in a notebook with the same result the callback
writes.
"""

from keras_erranalysis.analysis._dynamics import (
    REGIONS,
    compute_dynamics,
    compute_token_dynamics,
)
from keras_erranalysis.analysis._feature_stats import (
    binary_tests,
    compare_features,
    features_summary,
)
from keras_erranalysis.analysis._features import Example, Features, extract_features
from keras_erranalysis.analysis._health import (
    CheckResult,
    HealthReport,
    Split,
    health_checks,
    round_trip,
)
from keras_erranalysis.analysis._health_similarity import (
    kth_neighbour_distance,
    near_duplicate_pairs,
    text_ngrams,
    token_ngrams,
)
from keras_erranalysis.analysis._metrics import (
    confusion_matrix,
    confusion_pairs,
    per_class_metrics,
)
from keras_erranalysis.analysis._mislabeled import (
    DEFAULT_METHOD,
    DEFAULT_SEQUENCE_THRESHOLD,
    MISLABEL_METHODS,
    estimate_num_label_errors,
    likely_mislabeled,
    mislabel_score,
)
from keras_erranalysis.analysis._nonfinite import CAUSES, causes_summary, nonfinite_causes
from keras_erranalysis.analysis._padding import counted_padding
from keras_erranalysis.analysis._ranking import RANKINGS, log_views, rank_examples
from keras_erranalysis.analysis._sequence_dynamics import sequence_probabilities
from keras_erranalysis.analysis._sequence_metrics import (
    GENERATED_COLUMNS,
    FreeRunningMetrics,
    corpus_metrics,
    edit_distance,
    first_divergence,
    free_running_metrics,
    generated_metrics,
    rouge_l,
    sequence_metrics,
    teacher_forced_metrics,
)
from keras_erranalysis.analysis._similarity import nearest, pool_numpy, storage_array
from keras_erranalysis.analysis._slices import error_rate_by_bins, find_slices, slice_examples
from keras_erranalysis.analysis._text_metrics import (
    corpus_bleu,
    corpus_chrf,
    normalize_answer,
    perplexity,
    qa_exact_match,
    rouge_n,
    sentence_bleu,
    sentence_chrf,
    span_exact_match,
)
from keras_erranalysis.analysis._watch import WatchUpdate, example_lengths, update_watch_list

__all__ = [
    "WatchUpdate",
    "example_lengths",
    "update_watch_list",
    "CAUSES",
    "CheckResult",
    "HealthReport",
    "Split",
    "health_checks",
    "kth_neighbour_distance",
    "near_duplicate_pairs",
    "round_trip",
    "text_ngrams",
    "token_ngrams",
    "causes_summary",
    "nonfinite_causes",
    "DEFAULT_METHOD",
    "DEFAULT_SEQUENCE_THRESHOLD",
    "sequence_probabilities",
    "MISLABEL_METHODS",
    "RANKINGS",
    "REGIONS",
    "Example",
    "Features",
    "FreeRunningMetrics",
    "GENERATED_COLUMNS",
    "binary_tests",
    "compare_features",
    "compute_dynamics",
    "compute_token_dynamics",
    "confusion_matrix",
    "confusion_pairs",
    "corpus_bleu",
    "corpus_chrf",
    "corpus_metrics",
    "counted_padding",
    "edit_distance",
    "error_rate_by_bins",
    "estimate_num_label_errors",
    "extract_features",
    "features_summary",
    "find_slices",
    "first_divergence",
    "free_running_metrics",
    "generated_metrics",
    "likely_mislabeled",
    "log_views",
    "mislabel_score",
    "nearest",
    "normalize_answer",
    "per_class_metrics",
    "perplexity",
    "pool_numpy",
    "qa_exact_match",
    "rank_examples",
    "rouge_l",
    "rouge_n",
    "sentence_bleu",
    "sentence_chrf",
    "sequence_metrics",
    "slice_examples",
    "span_exact_match",
    "storage_array",
    "teacher_forced_metrics",
]

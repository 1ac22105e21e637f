"""Compute: everything that runs the model.

The compiled, unreduced pass over the data (:func:`compute_losses`), attention weights
recorded from the model's own layers, embeddings, the in-flight recorder that records
during ``fit``, and loading a saved model for a cluster. Nothing here analyses or draws:
the results are arrays (a :class:`~keras_erranalysis.LossReport`), for
:mod:`keras_erranalysis.analysis` to read.
"""

from keras_erranalysis.compute._attention import (
    AttentionDiagnostics,
    attention_columns,
    attention_diagnostics,
    attention_from_pass,
    extract_attention,
)
from keras_erranalysis.compute._attention_diagnostics import DIAGNOSTIC_NAMES
from keras_erranalysis.compute._attention_hooks import (
    find_attention_layers,
    recording_attention,
    register_attention_layer,
    unregister_attention_layer,
)
from keras_erranalysis.compute._attention_roles import AttentionRole, attention_roles
from keras_erranalysis.compute._checks import finite_input_rows, weights_are_finite
from keras_erranalysis.compute._embeddings import (
    compute_embeddings,
    default_layer,
    embedding_columns,
)
from keras_erranalysis.compute._generate import (
    Generated,
    GenerationError,
    add_generated,
    decode_report,
    end_id_from_tokens,
    find_decoder_input,
    generate_greedy,
    generate_with,
    generation_end_id,
    score_generated,
)
from keras_erranalysis.compute._generate_attention import GeneratedAttention, generate_attention
from keras_erranalysis.compute._inflight import InFlightRecorder, with_example_ids
from keras_erranalysis.compute._losses import PassResult, compute_losses, run_pass
from keras_erranalysis.compute._model import (
    Cluster,
    cluster_from_tf_config,
    load_model,
    make_strategy,
)

__all__ = [
    "DIAGNOSTIC_NAMES",
    "AttentionDiagnostics",
    "AttentionRole",
    "Cluster",
    "Generated",
    "GeneratedAttention",
    "GenerationError",
    "InFlightRecorder",
    "PassResult",
    "add_generated",
    "attention_columns",
    "attention_diagnostics",
    "attention_from_pass",
    "attention_roles",
    "cluster_from_tf_config",
    "compute_embeddings",
    "compute_losses",
    "decode_report",
    "default_layer",
    "embedding_columns",
    "end_id_from_tokens",
    "extract_attention",
    "find_decoder_input",
    "finite_input_rows",
    "find_attention_layers",
    "generate_attention",
    "generate_greedy",
    "generate_with",
    "generation_end_id",
    "load_model",
    "make_strategy",
    "recording_attention",
    "register_attention_layer",
    "run_pass",
    "score_generated",
    "unregister_attention_layer",
    "weights_are_finite",
    "with_example_ids",
]

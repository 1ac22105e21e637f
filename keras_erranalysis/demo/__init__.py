"""The demo: CMUdict spelling -> phonemes, a small attention seq2seq model, and a run.

Public so that notebooks and users can build the same data and model by hand::

    from keras_erranalysis.demo import build_model, encode_pairs, load_cmudict

``keras-erranalysis demo`` calls :func:`run_demo`.
"""

from keras_erranalysis.demo._data import (
    BOS,
    EOS,
    PAD,
    DemoError,
    G2PData,
    encode_pairs,
    load_cmudict,
    sample_pairs,
)
from keras_erranalysis.demo._model import build_model
from keras_erranalysis.demo._run import (
    DemoResult,
    exposure_summary,
    format_summary,
    pick_right_examples,
    run_demo,
)

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "DemoError",
    "DemoResult",
    "G2PData",
    "build_model",
    "encode_pairs",
    "exposure_summary",
    "format_summary",
    "load_cmudict",
    "pick_right_examples",
    "run_demo",
    "sample_pairs",
]

"""Shared test setup: quiet TensorFlow, headless matplotlib, seeded Keras."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_keras():
    """Tests that use Keras start from the same seeds; pure numpy tests pay nothing."""
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(1234)
    yield


@pytest.fixture
def deterministic():
    """Deterministic TensorFlow ops for one test, switched back off afterwards."""
    import tensorflow as tf
    from tensorflow.python.framework import config

    was_on = config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was_on:
        config.disable_op_determinism()

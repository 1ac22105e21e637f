"""Shared test setup: quiet TensorFlow, headless matplotlib, seeded Keras."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_keras():
    """Every test starts from the same seeds and a fresh Keras name scope."""
    import keras

    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()

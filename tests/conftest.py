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

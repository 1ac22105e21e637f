"""A toy seq2seq task shared by the generation tests: reverse a string of letters."""

import numpy as np

TOKENS = ["", "<s>", "</s>", "a", "b", "c", "d", "e"]


def reverse_task(n=240, width=5, seed=0):
    """Reverse a string of 2..width letters: source, decoder input (<s> + target), labels."""
    rng = np.random.default_rng(seed)
    source = np.zeros((n, width), "int32")
    decoder_in = np.zeros((n, width + 1), "int32")
    labels = np.zeros((n, width + 1), "int32")
    for i, size in enumerate(rng.integers(2, width + 1, n)):
        letters = rng.integers(3, len(TOKENS), size)
        source[i, :size] = letters
        decoder_in[i, : size + 1] = [1, *letters[::-1]]
        labels[i, : size + 1] = [*letters[::-1], 2]
    return source, decoder_in, labels

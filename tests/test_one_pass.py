"""One traversal of the data yields the loss, attention and embedding columns."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_erranalysis.compute import attention_diagnostics, compute_embeddings, compute_losses
from keras_erranalysis.compute._attention import attention_columns, attention_from_pass
from keras_erranalysis.compute._compiled import cached_functions
from keras_erranalysis.compute._embeddings import embedding_columns
from keras_erranalysis.compute._losses import run_pass

N, T, VOCAB, BATCH = 40, 7, 30, 8


def tagger():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    hidden = keras.layers.Embedding(VOCAB, 16)(tokens)
    attended = keras.layers.MultiHeadAttention(2, 8, name="self_attention")(hidden, hidden)
    hidden = keras.layers.LayerNormalization(name="encoded")(hidden + attended)
    model = keras.Model(tokens, keras.layers.Dense(5, name="logits")(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, (N, T)).astype("int32")
    x[np.arange(T)[None, :] >= rng.integers(2, T + 1, N)[:, None]] = 0
    y = rng.integers(0, 5, (N, T)).astype("int32")
    return x, y


def counted(x, y, counter):
    """A dataset that counts how often it is read from the start, and its batches."""

    def batches():
        counter["traversals"] += 1
        for start in range(0, N, BATCH):
            counter["batches"] += 1
            yield x[start : start + BATCH], y[start : start + BATCH]

    signature = (tf.TensorSpec((None, T), tf.int32), tf.TensorSpec((None, T), tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_losses_attention_and_embeddings_come_from_one_traversal(jit_compile):
    model = tagger()
    x, y = data()
    counter = {"traversals": 0, "batches": 0}
    keep = [3, 17, 38]
    attention = attention_columns(model, keep=keep)
    embedding = embedding_columns(model, layer="encoded")
    result = run_pass(
        model,
        counted(x, y, counter),
        extra=[attention, embedding],
        keep=keep,
        jit_compile=jit_compile,
        verbose=0,
    )
    assert counter == {"traversals": 1, "batches": N // BATCH}

    # Every column equals what the separate passes give.
    alone = compute_losses(model, (x, y), batch_size=BATCH, verbose=0, jit_compile=False)
    np.testing.assert_allclose(result.report.loss, alone.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.report.inputs["input"], x)
    diag = attention_from_pass(attention, result.columns, result.kept, keep)
    reference = attention_diagnostics(model, x, keep=keep, batch_size=BATCH, jit_compile=False)
    assert set(diag.diagnostics) == set(reference.diagnostics)
    for key, values in reference.diagnostics.items():
        np.testing.assert_allclose(diag.diagnostics[key], values, rtol=1e-5, atol=1e-6)
    for path, weights in reference.weights.items():
        np.testing.assert_allclose(diag.weights[path], weights, rtol=1e-5, atol=1e-6)
    vectors = compute_embeddings(model, x, layer="encoded", batch_size=BATCH, jit_compile=False)
    np.testing.assert_allclose(result.columns["embedding"], vectors, rtol=1e-5, atol=1e-6)


def test_one_cache_recompiles_for_a_changed_option_and_nothing_else():
    model = tagger()
    x, y = data()
    compute_losses(model, (x, y), verbose=0, jit_compile=False)
    compute_losses(model, (x, y), verbose=0, jit_compile=False)
    assert len(cached_functions(model)) == 1
    (function,) = cached_functions(model).values()
    traces = function._step.experimental_get_tracing_count()
    compute_losses(model, (x, y), verbose=0, jit_compile=False)
    assert function._step.experimental_get_tracing_count() == traces
    compute_losses(model, (x, y), verbose=0, jit_compile=False, ignore_class=0)
    assert len(cached_functions(model)) == 2
    run_pass(model, (x, y), extra=[embedding_columns(model)], verbose=0, jit_compile=False)
    assert len(cached_functions(model)) == 3


def test_numpy_input_picks_a_large_batch_and_honours_an_explicit_one():
    from keras_erranalysis.compute import _compiled

    model = tagger()
    x, y = data()
    assert _compiled.auto_batch_size(model, x, 100_000, 5 * T) > 1_000
    assert _compiled.auto_batch_size(model, x, N, 5 * T) == N
    a = compute_losses(model, (x, y), verbose=0, jit_compile=False)
    b = compute_losses(model, (x, y), batch_size=3, verbose=0, jit_compile=False)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5, atol=1e-6)


def test_weights_of_the_hardest_examples_are_chosen_while_the_data_is_read():
    from keras_erranalysis.analysis import rank_examples

    model = tagger()
    x, y = data()
    watch = [2]
    attention = attention_columns(model, hardest=3)
    result = run_pass(
        model,
        (x, y),
        extra=[attention],
        keep=watch,
        keep_hardest=3,
        batch_size=BATCH,
        jit_compile=False,
        verbose=0,
    )
    frame = result.report.scalars().assign(position=np.arange(N))
    hardest = rank_examples(frame, by="loss", k=3)["position"].tolist()
    rows = hardest + watch
    diag = attention_from_pass(attention, result.columns, result.kept, rows)
    assert diag.kept.tolist() == rows
    assert len(result.kept["kept/position"]) <= 2 * 3 + len(watch)  # narrowed on the host
    reference = attention_diagnostics(model, x, keep=rows, batch_size=BATCH, jit_compile=False)
    for path, weights in reference.weights.items():
        np.testing.assert_allclose(diag.weights[path], weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_large_array_batches_run_straight_from_numpy(monkeypatch, jit_compile):
    from keras_erranalysis.compute import _compiled

    model = tagger()
    x, y = data()
    reference = compute_losses(model, (x, y), batch_size=7, verbose=0, jit_compile=False)
    monkeypatch.setattr(_compiled, "ROWS_PER_CALL", 4)  # batches of 7 >= 4: the numpy path
    attention = attention_columns(model, hardest=2)
    result = run_pass(
        model,
        (x, y),
        extra=[attention],
        keep=[39],
        keep_hardest=2,
        batch_size=7,  # 40 = 5 x 7 + 5: a smaller last batch (padded under XLA)
        jit_compile=jit_compile,
        verbose=0,
    )
    np.testing.assert_allclose(result.report.loss, reference.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.report.inputs["input"], x)
    assert 39 in result.kept["kept/position"]
    assert result.kept["kept/position"].max() < N

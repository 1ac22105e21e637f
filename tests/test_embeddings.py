import numpy as np
import pytest
from _presentation import classification_report

from keras_erranalysis.analysis import nearest, pool_numpy, storage_array
from keras_erranalysis.compute import compute_embeddings, default_layer
from keras_erranalysis.run._reader import load_run
from keras_erranalysis.run._writer import RunWriter


def _masked_classifier():
    import keras

    tokens = keras.Input((5,), dtype="int32", name="tokens")
    hidden = keras.layers.Embedding(12, 4, mask_zero=True, name="embed")(tokens)
    hidden = keras.layers.Dense(3, name="states")(hidden)  # (batch, time, 3), mask passes
    pooled = keras.layers.GlobalAveragePooling1D(name="pooled")(hidden)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(tokens, probs)


TOKENS = np.array([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0], [4, 5, 6, 7, 8], [9, 9, 9, 0, 0]])


def test_pool_numpy_by_hand():
    values = np.array([[[1, 2], [3, 4], [100, 100]], [[5, 5], [6, 6], [7, 7]]], np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_array_equal(pool_numpy(values, mask, "mean"), [[2, 3], [0, 0]])
    np.testing.assert_array_equal(pool_numpy(values, mask, "max"), [[3, 4], [0, 0]])
    np.testing.assert_array_equal(pool_numpy(values, mask, "first"), [[1, 2], [0, 0]])
    np.testing.assert_array_equal(pool_numpy(values, mask, "last"), [[3, 4], [0, 0]])
    np.testing.assert_array_equal(pool_numpy(values, None, "last"), [[100, 100], [7, 7]])
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_numpy(values, mask, "median")


def test_default_layer_skips_output_and_logits_and_needs_a_graph():
    import keras

    assert default_layer(_masked_classifier()).name == "pooled"  # logits: output's shape
    sequential = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2)]
    )
    assert default_layer(sequential).name == "hidden"

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed"):
        compute_embeddings(model, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="No layer named 'nope'.*states"):
        compute_embeddings(_masked_classifier(), TOKENS, layer="nope")


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last"])
def test_compute_embeddings_pools_over_the_mask_only(pooling):
    import keras

    model = _masked_classifier()
    labels = np.array([0, 1, 0, 1])
    vectors = compute_embeddings(
        model, (TOKENS, labels), layer="states", pooling=pooling, batch_size=3
    )
    states = keras.Model(model.inputs, model.get_layer("states").output).predict(TOKENS, verbose=0)
    expected = pool_numpy(states, TOKENS != 0, pooling)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    # Padding really is excluded: the padded positions' states differ from the counted ones.
    unmasked = pool_numpy(states, None, pooling)
    if pooling != "first":
        assert not np.allclose(unmasked[:2], expected[:2])


def test_default_embedding_equals_the_pooled_layer_output():
    import keras
    import tensorflow as tf

    model = _masked_classifier()
    data = tf.data.Dataset.from_tensor_slices((TOKENS, np.zeros(4, "int32"))).batch(2)
    vectors = compute_embeddings(model, data)
    pooled = keras.Model(model.inputs, model.get_layer("pooled").output).predict(TOKENS, verbose=0)
    assert vectors.shape == (4, 3) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, pooled, rtol=1e-5, atol=1e-6)


def test_nearest_is_exact_across_chunks():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(103, 8)).astype(np.float32)
    vectors[17] = 0.0  # a zero vector has similarity 0
    query = vectors[5]
    rows, sims = nearest(vectors, query, 10, exclude=5, chunk_rows=7)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    brute = unit @ (query / np.linalg.norm(query))
    brute[5] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-brute, kind="stable")[:10])
    np.testing.assert_allclose(sims, brute[rows], rtol=1e-5)
    assert 5 not in rows
    rows, sims = nearest(vectors, -vectors[17] + 1, 103, chunk_rows=10)
    assert sims[list(rows).index(17)] == 0.0
    assert len(nearest(vectors, query, 0)[0]) == 0


def test_storage_array_halves_unless_it_would_overflow():
    assert storage_array(np.ones((2, 3), np.float32)).dtype == np.float16
    assert storage_array(np.full((2, 3), 1e6, np.float32)).dtype == np.float32


def test_run_similar_returns_planted_neighbours_with_their_numbers(tmp_path):
    report = classification_report(12)
    vectors = np.zeros((12, 3), np.float32)
    vectors[:, 0] = 1.0
    vectors[:, 1] = np.arange(12) * 0.1  # row 0 is nearest to 1, then 2, then 3 ...
    vectors[7] = [-1.0, 0.0, 0.0]  # opposite: last
    writer = RunWriter(tmp_path / "run", decoding={"label_names": ["cat", "dog", "bird"]})
    writer.write_epoch(1, report)  # an epoch without embeddings
    writer.write_epoch(2, report, vectors={"embedding": storage_array(vectors)})
    run = load_run(tmp_path / "run")
    table = run.similar(100, k=4)
    assert table["example_id"].tolist() == [101, 102, 103, 104]
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["similarity"].is_monotonic_decreasing and table["similarity"].iloc[0] > 0.99
    np.testing.assert_allclose(table["loss"], report.loss[1:5])
    assert table["correct"].tolist() == report.correct[1:5].tolist()
    assert table["label_text"].tolist() == [["cat", "dog", "bird"][i] for i in report.label[1:5]]
    assert run.similar(100, k=11)["example_id"].iloc[-1] == 107
    with pytest.raises(KeyError, match="embeddings=True"):
        run.similar(100, epoch=1)
    with pytest.raises(KeyError, match="No example with id 5"):
        run.similar(5)


def test_write_epoch_rejects_bad_vectors(tmp_path):
    report = classification_report(4)
    writer = RunWriter(tmp_path / "run")
    with pytest.raises(ValueError, match="rows"):
        writer.write_epoch(1, report, vectors={"embedding": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="new lowercase name"):
        writer.write_epoch(1, report, vectors={"loss": np.zeros((4, 2))})

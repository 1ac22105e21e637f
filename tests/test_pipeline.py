"""One analyzed epoch, the same whoever runs it: the callback, analyze, the pipeline by hand."""

import numpy as np
import pandas as pd
import pytest

from keras_erranalysis import ErrorAnalysis, PassOptions, analyze, load_run
from keras_erranalysis.options import AttentionAnalysis, FeatureAnalysis, resolve_analyses
from keras_erranalysis.pipeline import heatmap_rows


def _trained(tmp_path):
    import keras

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 1)).astype("int64")
    y[:9] = 2 - y[:9]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,), name="features"), keras.layers.Dense(8, "relu"), keras.layers.Dense(3)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ErrorAnalysis(
        (x, y),
        log_dir=tmp_path / "callback",
        label_names=["neg", "pos", "big"],
        top_k=5,
        pass_options=PassOptions(jit_compile=False),
        verbose=0,
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return x, y


def test_callback_and_analyze_write_the_same_tables(tmp_path):
    _trained(tmp_path)
    analyze(
        str(tmp_path / "model.keras"),
        str(tmp_path / "data.npz"),
        tmp_path / "offline",
        label_column="y",
        label_names=["neg", "pos", "big"],
        top_k=5,
        chunk_size=50,  # three chunks: the hardest table is ranked chunk by chunk
        jit_compile=False,
        verbose=0,
    )
    live, offline = load_run(tmp_path / "callback"), load_run(tmp_path / "offline")
    assert (
        sorted(live.meta()["tables"])
        == sorted(offline.meta()["tables"])
        == [
            "hardest",
            "per_class",
        ]
    )
    per_class = live.table("per_class")
    assert list(per_class.iloc[:3, 0]) == ["neg", "pos", "big"]  # the index, reset
    pd.testing.assert_frame_equal(per_class, offline.table("per_class"), atol=1e-5)
    hardest_live, hardest_offline = live.table("hardest"), offline.table("hardest")
    assert list(hardest_live["example_id"]) == list(hardest_offline["example_id"])
    np.testing.assert_allclose(hardest_live["loss"], hardest_offline["loss"], atol=1e-5)


def test_heatmap_rows_are_the_hardest_then_a_fixed_watch_list():
    from _presentation import classification_report

    report = classification_report(n=12, seed=0)
    order = np.argsort(-report.loss, kind="stable")
    hardest, watched, watch = heatmap_rows(report, 3, None)
    assert hardest == order[:3].tolist()
    right = np.flatnonzero(report.correct)
    # n // 2 = 1 right example, fixed now: the one nearest to the median length
    lengths = np.array([len(text) for text in report.inputs["text"]])
    median = np.quantile(lengths, 0.5, method="nearest")
    assert len(watch) == 1 and watch[0] in right
    assert abs(lengths[watch[0]] - median) == np.abs(lengths[right] - median).min()
    assert watched == [r for r in watch if r not in hardest]
    # the watch list stays when the model changes
    report.loss = report.loss[::-1].copy()
    again, _, kept = heatmap_rows(report, 3, watch)
    assert kept == watch and again != hardest
    # while no example is right there is no watch list yet, and it is chosen later
    report.correct = np.zeros(12, bool)
    _, watched, none_yet = heatmap_rows(report, 3, None)
    assert none_yet is None and watched == []
    report.correct = np.arange(12) == 7
    assert heatmap_rows(report, 3, none_yet)[2] == [7]


def test_analyses_by_name_and_object_and_their_mistakes():
    found = resolve_analyses(["attention", FeatureAnalysis(texts=["a"])])
    assert found[AttentionAnalysis] == AttentionAnalysis()
    assert found[FeatureAnalysis].texts == ["a"]
    with pytest.raises(ValueError, match="Unknown analysis 'atention'"):
        resolve_analyses(["atention"])
    with pytest.raises(ValueError, match="AttentionAnalysis is given twice"):
        resolve_analyses(["attention", AttentionAnalysis(heatmaps=2)])
    with pytest.raises(ValueError, match="pass AttentionAnalysis"):
        resolve_analyses([3])


def test_vocab_given_twice_is_an_error():
    from keras_erranalysis import Decoding

    with pytest.raises(ValueError, match="vocab is given twice"):
        ErrorAnalysis(([0], [0]), vocab=["a"], decoding=Decoding(vocab=["b"]))
    callback = ErrorAnalysis(([0], [0]), vocab=["a", "b"], log_dir=None)
    assert callback.decoding["vocab"].decode([1]) == "b"


def test_a_diverged_run_is_named_not_silent(tmp_path):
    import warnings

    import keras

    from keras_erranalysis import write_report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = rng.integers(0, 2, 40)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.set_weights([np.full((3, 2), np.nan, "float32"), np.zeros(2, "float32")])
    callback = ErrorAnalysis((x, y), log_dir=tmp_path / "run", tensorboard=True, verbose=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    numpy_warnings = [w for w in seen if "empty slice" in str(w.message)]
    assert not numpy_warnings
    run = load_run(tmp_path / "run")
    assert run.epochs == [1, 2] and not np.isfinite(run.array("loss")).any()
    with pytest.raises(ValueError, match="40 of 40 examples never had a finite loss"):
        run.likely_mislabeled()
    html = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "never had a finite loss" in html


def _empty_input_model():
    import keras

    inp = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(20, 4, mask_zero=True)(inp)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)  # 0/0 for an all-padding row
    model = keras.Model(inp, keras.layers.Dense(2)(pooled))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_empty_inputs_are_named_before_training_and_in_every_epoch(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (32, 6)).astype("int32")
    x[[3, 17]] = 0  # two empty inputs: every position is padding
    y = rng.integers(0, 2, 32)
    model = _empty_input_model()
    callback = ErrorAnalysis((x, y), log_dir=tmp_path / "run", verbose=1)
    with pytest.warns(RuntimeWarning, match=r"pre-flight: 2 of 32 .*empty input.*ids \[3, 17\]"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    out = capsys.readouterr().out
    assert "with NaN/inf loss (" in out  # the epoch line names the cause
    run = load_run(tmp_path / "run")
    causes = np.asarray(run.report().extra["nonfinite_cause"])
    loss = np.asarray(run.array("loss"))
    assert not np.isfinite(loss[[3, 17]]).any()
    assert all("empty input" in c or "diverged" in c for c in causes[[3, 17]])
    assert all(c == "" or "diverged" in c for i, c in enumerate(causes) if i not in (3, 17))


def test_nonfinite_causes_in_order():
    from _presentation import classification_report

    from keras_erranalysis.analysis import CAUSES, nonfinite_causes

    report = classification_report(n=6, seed=1)
    report.loss = np.array([0.2, np.nan, np.inf, np.nan, np.nan, 0.1])
    report.n_tokens = np.array([1, 0, 1, 1, 1, 1])
    report.label = np.array([0, 0, 7, 1, 1, 0])
    report.inputs = {}
    causes = nonfinite_causes(report, input_finite=np.array([1, 1, 1, 0, 1, 1], bool))
    assert causes.tolist() == [
        "",
        CAUSES["no_counted"],
        CAUSES["label_range"],
        CAUSES["input_values"],
        CAUSES["output"],
        "",
    ]
    weights = nonfinite_causes(report, weights_finite=False)
    assert set(weights[[1, 2, 3, 4]]) == {CAUSES["weights"]} and weights[0] == ""


@pytest.mark.parametrize("fit_verbose", [0, 2])
def test_the_callback_follows_fits_verbosity(tmp_path, capsys, fit_verbose):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3)).astype("float32")
    y = rng.integers(0, 2, 24)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ErrorAnalysis((x, y), log_dir=tmp_path / "run")  # verbose not given
    model.fit(x, y, epochs=1, verbose=fit_verbose, callbacks=[callback])
    out = capsys.readouterr().out
    assert ("ErrorAnalysis epoch 1:" in out) == (fit_verbose > 0)
    assert "batch" not in out  # no progress bar of the pass at verbose 0 or 2


def _tagger(ignore_class=None):
    import keras

    inp = keras.Input((8,), dtype="int32")
    hidden = keras.layers.Embedding(12, 8)(inp)  # no mask: padding reaches the loss
    model = keras.Model(inp, keras.layers.Dense(5)(hidden))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class)
    model.compile("adam", loss)
    return model


@pytest.mark.parametrize("ignore_class", [None, 0])
def test_counted_padding_is_named_once_before_training(tmp_path, ignore_class, recwarn):
    import warnings

    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 8, 40)
    x = rng.integers(1, 12, (40, 8)).astype("int32")
    y = rng.integers(1, 5, (40, 8)).astype("int32")
    pad = np.arange(8)[None, :] >= lengths[:, None]
    x[pad], y[pad] = 0, 0
    callback = ErrorAnalysis((x, y), log_dir=tmp_path / "run", verbose=0)
    warnings.simplefilter("always")
    _tagger(ignore_class).fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    found = [w for w in recwarn if "looks like padding" in str(w.message)]
    if ignore_class is None:
        assert len(found) == 1  # once, at the pre-flight, not every epoch
        assert "ignore_class=0" in str(found[0].message)
        assert int(load_run(tmp_path / "run").array("n_tokens").min()) == 8  # as warned
    else:
        assert not found


def test_public_names_stay_functions_after_their_modules_are_imported():
    import importlib

    import keras_erranalysis

    for module in ("_analyze", "health", "pipeline", "callback", "options", "decoding"):
        importlib.import_module(f"keras_erranalysis.{module}")
    for name in keras_erranalysis.__all__:
        value = getattr(keras_erranalysis, name)
        assert not isinstance(value, type(importlib)), f"{name} is a module, not the API"


def test_one_traversal_per_analyzed_epoch_with_attention_and_embeddings(tmp_path):
    import keras
    import tensorflow as tf

    from keras_erranalysis import AttentionAnalysis, EmbeddingAnalysis

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, t = 48, 6
    x = rng.integers(1, 15, (n, t)).astype("int32")
    y = rng.integers(0, 4, (n, t)).astype("int32")
    inp = keras.Input((t,), dtype="int32")
    hidden = keras.layers.Embedding(15, 8)(inp)
    hidden = keras.layers.MultiHeadAttention(2, 4, name="self_attention")(hidden, hidden)
    model = keras.Model(inp, keras.layers.Dense(4)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rows = [0]

    def examples():
        for start in range(0, n, 16):
            rows[0] += len(x[start : start + 16])
            yield x[start : start + 16], y[start : start + 16]

    spec = (tf.TensorSpec((None, t), tf.int32), tf.TensorSpec((None, t), tf.int32))
    data = tf.data.Dataset.from_generator(examples, output_signature=spec)
    callback = ErrorAnalysis(
        data,
        log_dir=tmp_path / "run",
        analyses=[AttentionAnalysis(heatmaps=2), EmbeddingAnalysis()],
        verbose=0,
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    assert rows[0] == 3 * n  # the pre-flight, then ONE traversal per analyzed epoch
    run = load_run(tmp_path / "run")
    assert run.array("embedding", 2).shape[0] == n
    assert any(name.startswith("attn_") for name in run.report(2).extra)
    pngs = run.files(2)
    assert sum(name.startswith("attention_hardest") for name in pngs) == 2

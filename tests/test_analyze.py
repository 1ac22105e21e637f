"""analyze: a saved model over TFRecord / CSV / Parquet / npz, chunked, into the run format."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from keras_erranalysis._analyze import analyze
from keras_erranalysis._errors import AnalyzeError
from keras_erranalysis.analysis import log_views
from keras_erranalysis.cli import main as cli_main
from keras_erranalysis.compute import Cluster, cluster_from_tf_config, load_model
from keras_erranalysis.run import open_source
from keras_erranalysis.run._reader import load_run

N = 230
CHUNK = 70  # 4 chunks, the last one of 20 examples


def _classifier_data():
    rng = np.random.RandomState(0)
    x = rng.randn(N, 4).astype("float32")
    y = ((x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64") + (x[:, 2] > 1)).astype("int64")
    y[:15] = 2 - y[:15]  # planted label noise
    return x, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A classifier trained and saved by a previous step, and its data in every format."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("analyze")
    x, y = _classifier_data()
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(hidden))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(folder / "model.keras")

    np.savez(folder / "data.npz", x=x, y=y)
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = y
    frame.to_csv(folder / "data.csv", index=False)
    frame.to_parquet(folder / "data.parquet", row_group_size=50)
    for part, rows in enumerate((slice(0, 100), slice(100, N))):  # two files, one run
        with tf.io.TFRecordWriter(str(folder / f"data-{part}.tfrecord")) as writer:
            for xi, yi in zip(x[rows], y[rows]):
                feature = {
                    "features": tf.train.Feature(float_list=tf.train.FloatList(value=xi)),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[yi])),
                }
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                )
    keras.backend.clear_session()
    return folder


def _reference(folder):
    from keras_erranalysis import compute_losses

    model = load_model(folder / "model.keras")
    x, y = _classifier_data()
    return compute_losses(model, (x, y), batch_size=32, verbose=0)


@pytest.mark.parametrize("data", ["data.npz", "data.csv", "data.parquet", "data-*.tfrecord"])
def test_each_format_equals_an_in_memory_pass(saved, tmp_path, data):
    result = analyze(
        saved / "model.keras",
        str(saved / data),
        tmp_path / "run",
        chunk_size=CHUNK,
        batch_size=32,
        top_k=7,
        verbose=0,
    )
    assert (result.n_examples, result.epoch, result.is_chief) == (N, 1, True)
    run = load_run(tmp_path / "run", verify=True)
    assert run.epochs == [1]
    report = run.report()
    ref = _reference(saved)
    np.testing.assert_array_equal(report.example_id, np.arange(N))
    np.testing.assert_allclose(report.loss, ref.loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(report.margin, ref.margin, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(report.label, ref.label)
    np.testing.assert_array_equal(report.prediction, ref.prediction)
    # the hardest table from per-chunk candidates equals one ranking over all examples
    hardest = run.table("hardest")
    expected = log_views(ref.to_frame(), k=7)
    assert hardest["view"].tolist() == expected["view"].tolist()
    assert hardest["example_id"].tolist() == expected["example_id"].tolist()
    assert run.meta()["info"]["source"] == "analyze"
    # nothing but the run is left behind (no staging folder, no lock)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch_0001", "run.json"]


def test_epochs_append_and_epoch_label(saved, tmp_path):
    log_dir = tmp_path / "run"
    kwargs = {"chunk_size": 1000, "verbose": 0}
    analyze(saved / "model.keras", saved / "data.npz", log_dir, **kwargs)
    analyze(saved / "model.keras", saved / "data.npz", log_dir, **kwargs)
    analyze(saved / "model.keras", saved / "data.npz", log_dir, epoch=7, **kwargs)
    assert load_run(log_dir).epochs == [1, 2, 7]
    with pytest.raises(AnalyzeError, match="Epoch 7 already exists"):
        analyze(saved / "model.keras", saved / "data.npz", log_dir, epoch=7, **kwargs)


def test_sequence_model_ragged_parquet_chunks_pad_and_match(tmp_path):
    import keras

    from keras_erranalysis import compute_losses

    rng = np.random.RandomState(1)
    lengths = np.r_[rng.randint(2, 5, 40), rng.randint(2, 8, 40)]  # chunk 1 shorter
    tokens = [rng.randint(1, 12, n).tolist() for n in lengths]
    tags = [[t % 3 for t in row] for row in tokens]
    keras.utils.set_random_seed(2)
    inp = keras.Input((None,), dtype="int32", name="tokens")
    hidden = keras.layers.Embedding(12, 6, mask_zero=True)(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "tagger.keras")
    pd.DataFrame({"tokens": tokens, "tags": tags}).to_parquet(tmp_path / "tags.parquet")

    analyze(
        tmp_path / "tagger.keras",
        tmp_path / "tags.parquet",
        tmp_path / "run",
        label_column="tags",
        chunk_size=40,
        verbose=0,
    )
    report = load_run(tmp_path / "run").report()
    width = int(lengths.max())
    x = np.zeros((80, width), "int32")
    y = np.zeros((80, width), "int64")
    for i, (row, tag) in enumerate(zip(tokens, tags)):
        x[i, : len(row)], y[i, : len(tag)] = row, tag
    ref = compute_losses(model, (x, y), verbose=0)
    assert report.token_mask.shape == (80, width)
    np.testing.assert_array_equal(report.token_mask, ref.token_mask)
    np.testing.assert_array_equal(report.n_tokens, lengths)
    np.testing.assert_allclose(report.loss, ref.loss, atol=1e-6, rtol=0)
    mask = ref.token_mask
    np.testing.assert_allclose(report.token_loss[mask], ref.token_loss[mask], atol=1e-6)
    np.testing.assert_array_equal(report.inputs["input"], x)  # token ids kept, padded


def test_attention_diagnostics_become_extra_columns(tmp_path):
    import keras

    from keras_erranalysis.compute._attention import attention_diagnostics

    rng = np.random.RandomState(4)
    tokens = rng.randint(1, 20, (45, 5)).astype("int32")
    tokens[rng.rand(45, 5) < 0.3] = 0
    labels = (tokens % 2).astype("int64")
    keras.utils.set_random_seed(4)
    inp = keras.Input((5,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(20, 8, mask_zero=True)(inp)
    attended = keras.layers.MultiHeadAttention(2, 4, name="mha")(embedded, embedded)
    model = keras.Model(inp, keras.layers.Dense(2)(attended))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", tokens=tokens, label=labels)
    analyze(
        tmp_path / "m.keras",
        tmp_path / "d.npz",
        tmp_path / "run",
        chunk_size=20,
        batch_size=8,
        attention=True,
        verbose=0,
    )
    run = load_run(tmp_path / "run")
    direct = attention_diagnostics(model, (tokens, labels), batch_size=8).diagnostics
    assert "attn_entropy/mha" in direct
    for name, values in direct.items():
        np.testing.assert_allclose(run.array(name), values, atol=1e-6, rtol=0)
    assert "attn_entropy/mha" in run.table("hardest").columns


def test_named_inputs_matched_by_name_mismatch_and_text_labels(tmp_path):
    import keras

    from keras_erranalysis import compute_losses

    rng = np.random.RandomState(3)
    keras.utils.set_random_seed(3)
    a, b = keras.Input((1,), name="age"), keras.Input((2,), name="pos")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model({"age": a, "pos": b}, keras.layers.Dense(2)(joined))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    age, pos, y = rng.rand(30, 1), rng.rand(30, 2), rng.randint(0, 2, 30)
    np.savez(tmp_path / "d.npz", pos=pos, age=age, y=y)  # keys in another order
    analyze(tmp_path / "m.keras", tmp_path / "d.npz", tmp_path / "ok", verbose=0)
    ref = compute_losses(model, ({"age": age, "pos": pos}, y), verbose=0)
    np.testing.assert_allclose(load_run(tmp_path / "ok").report().loss, ref.loss, atol=1e-6)

    # 'pos' is one CSV column but the model wants 2 numbers per example
    frame = pd.DataFrame({"age": age[:, 0], "pos": pos[:, 0], "y": y})
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(AnalyzeError, match=r"input 'pos' expects examples of shape \(2,\)"):
        analyze(tmp_path / "m.keras", tmp_path / "d.csv", tmp_path / "r", verbose=0)
    assert not (tmp_path / "r" / "epoch_0001").exists()

    np.savez(tmp_path / "t.npz", pos=pos, age=age, y=np.where(y > 0, "cat", "dog"))
    with pytest.raises(AnalyzeError, match="holds text"):
        analyze(tmp_path / "m.keras", tmp_path / "t.npz", tmp_path / "r2", verbose=0)


def test_cli_errors_are_one_line_with_nonzero_exit(saved, tmp_path, capsys):
    model = str(saved / "model.keras")
    cases = [
        (["--label-column", "nope"], "Label column 'nope' is not in the data"),
        (["--features", "a,b,c"], "Model/data mismatch: model input 'features' expects"),
        (["--features", "a,zz"], "Feature column(s) ['zz'] are not in the data"),
    ]
    for extra, message in cases:
        code = cli_main(
            ["analyze", model, str(saved / "data.csv"), "-o", str(tmp_path / "r"), *extra]
        )
        err = capsys.readouterr().err
        assert code == 1
        assert message in err
        assert err.count("\n") == 1 and err.startswith("keras-erranalysis analyze: error:")
    code = cli_main(
        ["analyze", "missing.keras", str(saved / "data.csv"), "-o", str(tmp_path / "r")]
    )
    assert code == 1 and "does not exist" in capsys.readouterr().err
    # and a good run prints where it wrote
    code = cli_main(["analyze", model, str(saved / "data.npz"), "-o", str(tmp_path / "ok"), "-q"])
    assert code == 0 and "epoch 1 written to" in capsys.readouterr().out


def test_keras_erranalysis_analyze_command(saved, tmp_path, capsys):
    from keras_erranalysis import cli

    model, data = str(saved / "model.keras"), str(saved / "data.parquet")
    code = cli.main(
        [
            "analyze",
            model,
            data,
            "-o",
            str(tmp_path / "run"),
            "--label-column",
            "label",
            "--features",
            "a,b,c,d",
            "--batch-size",
            "64",
            "--epoch-label",
            "3",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = load_run(tmp_path / "run")
    assert run.epochs == [3]
    np.testing.assert_allclose(run.report().loss, _reference(saved).loss, atol=1e-6, rtol=0)
    code = cli.main(["analyze", model, data, "-o", str(tmp_path / "r2"), "--label-column", "y"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("keras-erranalysis analyze: error: Label column 'y' is not in")
    assert err.count("\n") == 1


def test_npz_named_keys_streamed_and_pickle_refused(saved, tmp_path):
    x, y = _classifier_data()
    np.savez_compressed(tmp_path / "named.npz", f1=x[:, :2], f2=x[:, 2:], target=y)
    analyze(
        saved / "model.keras",
        tmp_path / "named.npz",
        tmp_path / "run",
        features=["f1", "f2"],
        chunk_size=64,
        verbose=0,
    )
    report = load_run(tmp_path / "run").report()
    np.testing.assert_allclose(report.loss, _reference(saved).loss, atol=1e-6, rtol=0)

    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(AnalyzeError, match="need pickle"):
        analyze(saved / "model.keras", tmp_path / "objects.npz", tmp_path / "r2", verbose=0)


def test_tfrecord_feature_spec_json_and_parse_error(saved, tmp_path):
    spec = json.dumps({"features": ["float32", [4]], "label": ["int64", []]})
    analyze(
        saved / "model.keras",
        str(saved / "data-*.tfrecord"),
        tmp_path / "run",
        feature_spec=spec,
        verbose=0,
    )
    assert len(load_run(tmp_path / "run").report()) == N
    wrong = json.dumps({"features": ["float32", [5]], "label": ["int64", []]})
    with pytest.raises(AnalyzeError, match="Cannot parse the TFRecord examples"):
        analyze(
            saved / "model.keras",
            str(saved / "data-*.tfrecord"),
            tmp_path / "r2",
            feature_spec=wrong,
            verbose=0,
        )


def test_parquet_without_pyarrow_names_the_extra(saved, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"keras_erranalysis\[parquet\]"):
        open_source(saved / "data.parquet")


def test_cluster_from_tf_config_roles():
    def config(task_type, index, chief=False):
        cluster = {"worker": ["h:1", "h:2"]}
        if chief:
            cluster["chief"] = ["h:0"]
        return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})

    assert cluster_from_tf_config("") == Cluster()
    assert Cluster().is_chief
    worker0 = cluster_from_tf_config(config("worker", 0))
    assert (worker0.num_workers, worker0.is_chief) == (2, True)
    assert not cluster_from_tf_config(config("worker", 1)).is_chief
    with_chief = cluster_from_tf_config(config("worker", 0, chief=True))
    assert (with_chief.num_workers, with_chief.is_chief) == (3, False)
    assert cluster_from_tf_config(config("chief", 0, chief=True)).is_chief
    with pytest.raises(AnalyzeError, match="not in its cluster"):
        cluster_from_tf_config(config("worker", 2))
    with pytest.raises(AnalyzeError, match="not valid JSON"):
        cluster_from_tf_config("{oops")

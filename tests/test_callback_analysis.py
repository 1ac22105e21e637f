"""The callback wires attention, features and per-class tables into each epoch."""

import keras
import numpy as np
import pytest

from keras_erranalysis import AttentionAnalysis, Decoding, ErrorAnalysis, PassOptions, load_run
from keras_erranalysis.decoding import Vocabulary

CHARS = ["", "a", "b", "c", "d", "e", "f"]
OUT = ["", "A", "B", "C", "D", "E", "F"]


def copy_task(n=64, length=6, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(1, len(CHARS), (n, length))
    lengths = rng.integers(3, length + 1, n)
    src[np.arange(length)[None, :] >= lengths[:, None]] = 0
    target = src.copy()  # transliterate letter by letter: a monotone alignment
    decoder_in = np.roll(target, 1, axis=1)
    decoder_in[:, 0] = 1
    decoder_in[target == 0] = 0
    return {"source": src, "target_in": decoder_in}, target


def attention_seq2seq():
    src = keras.Input((None,), dtype="int32", name="source")
    tgt = keras.Input((None,), dtype="int32", name="target_in")
    enc = keras.layers.Embedding(len(CHARS), 16, mask_zero=True)(src)
    dec = keras.layers.Embedding(len(OUT), 16, mask_zero=True)(tgt)
    ctx = keras.layers.MultiHeadAttention(2, 8, name="cross_attention")(dec, enc)
    out = keras.layers.Dense(len(OUT))(keras.layers.Concatenate()([dec, ctx]))
    model = keras.Model([src, tgt], out)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(0.02),
    )
    return model


def test_attention_features_and_per_class_are_written_each_epoch(tmp_path):
    x, y = copy_task()
    model = attention_seq2seq()
    cb = ErrorAnalysis(
        (x, y),
        log_dir=tmp_path,
        vocab=OUT,
        verbose=0,
        pass_options=PassOptions(batch_size=16),
        decoding=Decoding(input_vocab=Vocabulary(CHARS, sep="")),
        analyses=[AttentionAnalysis(heatmaps=2)],
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    run = load_run(tmp_path)
    assert run.epochs == [1, 2]
    report = run.report(2)
    # diagnostics joined the per-example table, one value per example
    for name in ("attn_entropy", "attn_uncovered", "attn_diagonality", "attn_monotonicity"):
        values = np.asarray(report.extra[f"{name}/cross_attention"])
        assert values.shape == (64,)
        finite = values[np.isfinite(values)]
        assert finite.size == 64 and finite.min() >= 0 and finite.max() <= 1
    # heatmaps: the 2 hardest plus a watch list, PNG files listed in meta.json
    pngs = run.files(2)
    assert any(name.startswith("attention_hardest1_") for name in pngs)
    assert any(name.startswith("attention_watch1_") for name in pngs)
    for name in pngs:
        assert run.file_path(name, 2).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = run.table("per_class", 2)
    assert {"precision", "recall", "f1", "support"} <= set(per_class.columns)
    expected_support = int(np.asarray(report.token_mask).sum())
    assert (
        int(per_class.loc[per_class.iloc[:, 0] == "weighted avg", "support"].iloc[0])
        == expected_support
    )


def test_feature_table_finds_a_planted_cause(tmp_path):
    # A classifier that cannot see the letter "z": examples holding it get wrong labels.
    rng = np.random.default_rng(2)
    words = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(3, 7))) for _ in range(300)]
    words = [w + "z" if i % 4 == 0 else w for i, w in enumerate(words)]
    ids = np.zeros((300, 8), "int32")
    alphabet = ["", *"abcdefghz"]
    for i, w in enumerate(words):
        ids[i, : len(w)] = [alphabet.index(c) for c in w]
    labels = np.array([1 if "z" in w else 0 for w in words])
    inp = keras.Input((8,), dtype="int32")
    emb = keras.layers.Embedding(len(alphabet), 4)(inp)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(emb))
    model = keras.Model(inp, out)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.layers[1].set_weights([np.zeros((len(alphabet), 4), "float32")])  # blind model
    model.layers[-1].set_weights([np.zeros((4, 2), "float32"), np.array([2.0, 0.0], "float32")])
    cb = ErrorAnalysis(
        (ids, labels),
        log_dir=tmp_path,
        label_names=["plain", "has_z"],
        verbose=0,
        decoding=Decoding(input_vocab=Vocabulary(alphabet, sep="")),
    )
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_end(0)
    cb.on_train_end()
    table = load_run(tmp_path).table("features", 1)
    # the blind model is wrong exactly on label 1, which all "z" words have
    has_z = table[table["feature"].astype(str).str.contains("z")]
    assert len(has_z) and has_z["p_adjusted"].min() < 0.01
    best_z = has_z.sort_values("p_adjusted").iloc[0]
    assert best_z["wrong_value"] > best_z["right_value"]  # z is far commoner among errors
    assert table.index[table["feature"] == best_z["feature"]][0] < 5  # near the top


def test_attention_on_a_model_without_attention_is_a_clear_error(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.zeros((8, 4), "float32")
    y = np.zeros(8, "int64")
    cb = ErrorAnalysis((x, y), log_dir=tmp_path, verbose=0, analyses=[AttentionAnalysis()])
    with pytest.raises(ValueError, match="[Aa]ttention"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])

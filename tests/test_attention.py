"""Tests of keras_erranalysis.attention: extraction hooks, diagnostics, traps."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from keras_erranalysis.compute._attention import attention_diagnostics, extract_attention
from keras_erranalysis.compute._attention_diagnostics import attention_diagnostics_tensors
from keras_erranalysis.compute._attention_hooks import (
    find_attention_layers,
    recording_attention,
    register_attention_layer,
    unregister_attention_layer,
)

# Keras warns when a masked tensor enters MHA's projections; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:Layer .* was passed an input with a mask")

VOCAB, DIM = 12, 8
ATOL = 1e-6


def _tokens(seed: int = 0, n: int = 5, t_src: int = 7, t_tgt: int = 5):
    rng = np.random.default_rng(seed)
    src = rng.integers(1, VOCAB, (n, t_src))
    tgt = rng.integers(1, VOCAB, (n, t_tgt))
    # Different padding per example (right padding), one example without padding.
    for i, (ls, lt) in enumerate([(7, 5), (4, 3), (2, 2), (6, 1), (5, 4)][:n]):
        src[i, ls:] = 0
        tgt[i, lt:] = 0
    return src, tgt


class Zoo:
    """Every Keras attention layer kind, self- and cross-attention, with padding masks."""

    def __init__(self) -> None:
        keras.utils.set_random_seed(1)
        # Large embeddings make the attention peaked, so comparisons are not trivial.
        init = keras.initializers.RandomNormal(stddev=2.0)
        self.emb_s = layers.Embedding(
            VOCAB, DIM, mask_zero=True, name="emb_s", embeddings_initializer=init
        )
        self.emb_t = layers.Embedding(
            VOCAB, DIM, mask_zero=True, name="emb_t", embeddings_initializer=init
        )
        self.mha_self = layers.MultiHeadAttention(2, 4, name="mha_self")
        self.gqa_causal = layers.GroupQueryAttention(4, 4, 2, name="gqa_causal")
        self.mha_cross = layers.MultiHeadAttention(2, 4, name="mha_cross")
        self.dot_cross = layers.Attention(name="dot_cross")
        self.add_cross = layers.AdditiveAttention(name="add_cross")
        self.dot_causal = layers.Attention(use_scale=True, name="dot_causal")
        src = keras.Input((None,), dtype="int32", name="src")
        tgt = keras.Input((None,), dtype="int32", name="tgt")
        outs = self.forward(src, tgt)
        # mha_self runs over the source length; it reaches the output through mha_cross.
        merged = layers.Concatenate()([outs[k] for k in sorted(outs) if k != "mha_self"])
        self.model = keras.Model([src, tgt], layers.Dense(VOCAB)(merged))

    def forward(self, src, tgt, *, scores: bool = False):
        """The graph; with scores=True, eagerly by hand asking each layer for its scores."""
        kw = {"return_attention_scores": True} if scores else {}
        es, et = self.emb_s(src), self.emb_t(tgt)
        out, w = {}, {}

        def run(name, result):
            if scores:
                out[name], w[name] = result
            else:
                out[name] = result
            return out[name]

        enc = run("mha_self", self.mha_self(es, es, **kw))
        dec = run("gqa_causal", self.gqa_causal(et, et, use_causal_mask=True, **kw))
        run("mha_cross", self.mha_cross(dec, enc, **kw))
        # MultiHeadAttention deletes the Keras mask of its input tensors (a Keras trap), so
        # the other layers get fresh embedding outputs that still carry their masks.
        es, et = self.emb_s(src), self.emb_t(tgt)
        run("dot_cross", self.dot_cross([et, es], **kw))
        run("add_cross", self.add_cross([et, es], **kw))
        run("dot_causal", self.dot_causal([et, et], use_causal_mask=True, **kw))
        return w if scores else out


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


def _by_hand(zoo: Zoo, src, tgt) -> dict[str, np.ndarray]:
    scores = zoo.forward(tf.constant(src), tf.constant(tgt), scores=True)
    result = {}
    for name, value in scores.items():
        value = np.asarray(value)
        result[name] = value[:, None] if value.ndim == 3 else value
    return result


def _assert_unhooked(model) -> None:
    for layer in find_attention_layers(model).values():
        assert "call" not in layer.__dict__
        assert layer.call.__func__ is type(layer).call


@pytest.mark.parametrize("jit", [False, True])
def test_weights_equal_scores_from_calling_each_layer_by_hand(zoo, jit):
    src, tgt = _tokens()
    expected = _by_hand(zoo, src, tgt)
    got = extract_attention(zoo.model, [src, tgt], jit_compile=jit)
    assert set(got) == set(expected)
    for name, value in expected.items():
        # Runtime shapes: cross-attention is (batch, heads, T_q=5, T_kv=7).
        assert got[name].shape == value.shape, name
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=name)
    assert got["mha_cross"].shape == (5, 2, 5, 7)
    assert got["gqa_causal"].shape == (5, 4, 5, 5)
    assert got["dot_cross"].shape == (5, 1, 5, 7)
    _assert_unhooked(zoo.model)


def test_padded_keys_carry_zero_weight_and_causal_is_zero_above_diagonal(zoo):
    src, tgt = _tokens()
    got = extract_attention(zoo.model, [src, tgt], jit_compile=False)
    src_pad = src == 0
    tgt_pad = tgt == 0
    for name in ("mha_self", "mha_cross", "dot_cross", "add_cross"):
        w = got[name]
        assert np.all(w[np.broadcast_to(src_pad[:, None, None, :], w.shape)] == 0.0), name
    for name in ("gqa_causal", "dot_causal"):
        w = got[name]
        upper = np.triu(np.ones(w.shape[-2:], bool), k=1)
        assert np.all(w[..., upper] == 0.0), name
        assert np.all(w[np.broadcast_to(tgt_pad[:, None, None, :], w.shape)] == 0.0), name
        # ... while the valid lower triangle holds the weight: rows of real queries sum to 1
        rows = w.sum(-1)[:, 0]
        np.testing.assert_allclose(rows[~tgt_pad], 1.0, atol=1e-5)


def test_model_outputs_equal_before_and_after(zoo):
    src, tgt = _tokens(seed=3)
    before = zoo.model.predict([src, tgt], verbose=0)
    extract_attention(zoo.model, [src, tgt], jit_compile=False, diagnostics=True)
    after = zoo.model.predict([src, tgt], verbose=0)
    np.testing.assert_array_equal(before, after)
    _assert_unhooked(zoo.model)
    # A normal call returns a single tensor again (the hook forced a tuple).
    out = zoo.mha_self(tf.ones((1, 3, DIM)), tf.ones((1, 3, DIM)))
    assert not isinstance(out, tuple)


class Boom(layers.Layer):
    armed = False

    def call(self, x):
        if Boom.armed:
            raise RuntimeError("boom inside the pass")
        return x


def test_model_unchanged_when_the_pass_raises():
    keras.utils.set_random_seed(2)
    inp = keras.Input((4, DIM))
    mha = layers.MultiHeadAttention(2, 4, name="mha")
    gqa = layers.GroupQueryAttention(4, 2, 1, name="gqa")
    h = mha(inp, inp)
    h = gqa(h, h)
    model = keras.Model(inp, layers.Dense(3)(Boom()(h)))
    x = np.random.default_rng(0).normal(size=(3, 4, DIM)).astype("float32")
    before = model.predict(x, verbose=0)
    gqa_flag = gqa.__dict__.get("_return_attention_scores")
    Boom.armed = True
    try:
        with pytest.raises(RuntimeError, match="boom inside the pass"):
            extract_attention(model, x, jit_compile=False)
    finally:
        Boom.armed = False
    _assert_unhooked(model)
    assert gqa.__dict__.get("_return_attention_scores") == gqa_flag
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)


def test_no_attention_layer_gives_a_clear_error():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(ValueError) as info:
        extract_attention(model, np.zeros((2, 4), "float32"))
    message = str(info.value)
    for name in ("MultiHeadAttention", "GroupQueryAttention", "AdditiveAttention"):
        assert name in message
    assert "register_attention_layer" in message


def test_unknown_layer_selection_names_the_layers_found(zoo):
    with pytest.raises(ValueError, match="mha_cross"):
        extract_attention(zoo.model, list(_tokens()), layers=["nope"])
    got = extract_attention(zoo.model, list(_tokens()), layers=["mha_cross"], jit_compile=False)
    assert list(got) == ["mha_cross"]


def test_flash_attention_is_switched_off_for_the_pass_and_restored():
    keras.utils.set_random_seed(3)
    inp = keras.Input((5, DIM))
    twin_off = layers.MultiHeadAttention(2, 4, name="plain")
    flash = layers.MultiHeadAttention(2, 4, flash_attention=True, name="flash")
    model = keras.Model(inp, flash(inp, inp))
    twin_off(tf.zeros((1, 5, DIM)), tf.zeros((1, 5, DIM)))
    twin_off.set_weights(flash.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 5, DIM)).astype("float32")
    with pytest.raises(ValueError, match="flash attention"):
        flash(x, x, return_attention_scores=True)  # the trap the pass avoids
    got = extract_attention(model, x, jit_compile=False)
    _, expected = twin_off(x, x, return_attention_scores=True)
    np.testing.assert_allclose(got["flash"], expected, atol=ATOL)
    assert flash._flash_attention is True
    _assert_unhooked(model)


class Block(layers.Layer):
    """A custom layer holding attention layers, one of them shared."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = layers.MultiHeadAttention(2, 4, name="inner")
        self.dot = layers.Attention(name="dot")

    def call(self, x):
        h = self.inner(x, x)
        h = self.inner(h, h)  # shared: called twice
        return self.dot([h, x])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.emb = layers.Embedding(VOCAB, DIM)
        self.block = Block(name="block")
        self.head = layers.Dense(3)

    def call(self, x):
        return self.head(self.block(self.emb(x)))


def test_nested_subclassed_and_sequential_models_with_a_shared_layer():
    keras.utils.set_random_seed(4)
    model = Subclassed()
    x = np.random.default_rng(2).integers(0, VOCAB, (3, 6))
    model(x)
    assert list(find_attention_layers(model)) == ["sub/block/dot", "sub/block/inner"]
    got = extract_attention(model, x, jit_compile=False)
    assert set(got) == {"sub/block/inner", "sub/block/inner#2", "sub/block/dot"}
    e = model.emb(x)
    h1, w1 = model.block.inner(e, e, return_attention_scores=True)
    h2, w2 = model.block.inner(h1, h1, return_attention_scores=True)
    _, w3 = model.block.dot([h2, e], return_attention_scores=True)
    np.testing.assert_allclose(got["sub/block/inner"], w1, atol=ATOL)
    np.testing.assert_allclose(got["sub/block/inner#2"], w2, atol=ATOL)
    np.testing.assert_allclose(got["sub/block/dot"], np.asarray(w3)[:, None], atol=ATOL)
    _assert_unhooked(model)

    seq = keras.Sequential([keras.Input((6, DIM)), Block(name="blk")], name="seq")
    xs = np.random.default_rng(3).normal(size=(2, 6, DIM)).astype("float32")
    got = extract_attention(seq, xs, jit_compile=False, layers=["inner"])
    assert set(got) == {"seq/blk/inner", "seq/blk/inner#2"}


class OwnAttention(layers.Layer):
    """A user layer that can return its weights under its own keyword."""

    def call(self, q, v, return_weights=False):
        logits = tf.matmul(q, v, transpose_b=True)
        weights = tf.nn.softmax(logits, axis=-1)
        out = tf.matmul(weights, v)
        return (out, weights) if return_weights else out


def test_registered_user_layer():
    def own_fn(layer, call, args, kwargs):
        return call(*args, return_weights=True, **kwargs)

    keras.utils.set_random_seed(5)
    q_in, v_in = keras.Input((3, 4)), keras.Input((5, 4))
    own = OwnAttention(name="own")
    model = keras.Model([q_in, v_in], own(q_in, v_in))
    q = np.random.default_rng(4).normal(size=(2, 3, 4)).astype("float32")
    v = np.random.default_rng(5).normal(size=(2, 5, 4)).astype("float32")
    with pytest.raises(ValueError, match="no attention layer"):
        extract_attention(model, [q, v])
    register_attention_layer(OwnAttention, own_fn)
    try:
        got = extract_attention(model, [q, v], jit_compile=False, diagnostics=True)
    finally:
        unregister_attention_layer(OwnAttention)
    _, expected = own(q, v, return_weights=True)
    np.testing.assert_allclose(got["own"], np.asarray(expected)[:, None], atol=ATOL)
    assert got["attn_entropy/own"].shape == (2,)
    assert "call" not in own.__dict__


def test_recording_inside_another_compiled_pass(zoo):
    """Other passes (e.g. the loss pass) reuse the hooks inside their own tf.function."""
    src, tgt = _tokens()

    @tf.function(jit_compile=True)
    def step(s, t):
        with recording_attention(zoo.model, layers=["mha_cross"]) as recorder:
            logits = zoo.model([s, t], training=False)
        return logits, recorder.weights(), recorder.diagnostics()

    logits, weights, diag = step(tf.constant(src), tf.constant(tgt))
    # Equal at real positions. At padded queries Keras' scores path zeroes the fully masked
    # rows while its fused path averages all values, so those (ignored) outputs differ.
    real = tgt != 0
    expected = zoo.model.predict([src, tgt], verbose=0)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-5)
    np.testing.assert_allclose(
        weights["mha_cross"], _by_hand(zoo, src, tgt)["mha_cross"], atol=ATOL
    )
    assert set(diag) == {
        f"{n}/mha_cross"
        for n in ("attn_entropy", "attn_uncovered", "attn_diagonality", "attn_monotonicity")
    }
    _assert_unhooked(zoo.model)


def test_dataset_pass_keeps_diagnostics_for_all_and_weights_for_kept_only(zoo):
    src, tgt = _tokens(n=5)
    y = np.zeros((5, 5), "int64")
    full = extract_attention(zoo.model, [src, tgt], jit_compile=False, diagnostics=True)
    dataset = tf.data.Dataset.from_tensor_slices(((src, tgt), y)).batch(2)
    result = attention_diagnostics(zoo.model, dataset, keep=[4, 1], jit_compile=False)
    assert result.num_examples == 5
    assert list(result.kept) == [4, 1]
    for path in ("mha_cross", "dot_cross"):
        assert result.weights[path].shape[0] == 2
        np.testing.assert_allclose(result.weights[path], full[path][[4, 1]], atol=ATOL)
    assert len(result.diagnostics) == 4 * 6
    for key, values in result.diagnostics.items():
        assert values.shape == (5,)
        np.testing.assert_allclose(values, full[key], atol=1e-6, equal_nan=True)
    # Arrays batched here give the same numbers.
    again = attention_diagnostics(zoo.model, ([src, tgt], y), batch_size=3, jit_compile=False)
    for key, values in again.diagnostics.items():
        np.testing.assert_allclose(values, full[key], atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="holds only 5 examples"):
        attention_diagnostics(zoo.model, ([src, tgt], y), keep=[7], jit_compile=False)


def test_user_key_mask_is_applied_and_checked(zoo):
    src, tgt = _tokens()
    redundant = src != 0
    base = extract_attention(
        zoo.model, [src, tgt], jit_compile=False, diagnostics=True, layers=["mha_cross"]
    )
    same = extract_attention(
        zoo.model,
        [src, tgt],
        jit_compile=False,
        diagnostics=True,
        layers=["mha_cross"],
        key_mask={"mha_cross": redundant},
    )
    for key in base:
        np.testing.assert_allclose(same[key], base[key], atol=1e-6, equal_nan=True)
    # Hiding all keys but the first leaves one key: entropy 0, nothing uncovered.
    first_only = np.zeros_like(redundant)
    first_only[:, 0] = True
    one = extract_attention(
        zoo.model,
        [src, tgt],
        jit_compile=False,
        diagnostics=True,
        layers=["mha_cross"],
        key_mask=first_only,
    )
    np.testing.assert_allclose(one["attn_entropy/mha_cross"], 0.0)
    np.testing.assert_allclose(one["attn_uncovered/mha_cross"], 0.0)
    with pytest.raises(ValueError, match="key_mask has length 3"):
        extract_attention(
            zoo.model,
            [src, tgt],
            jit_compile=False,
            diagnostics=True,
            layers=["mha_cross"],
            key_mask=np.ones((5, 3), bool),
        )


# -- diagnostics of hand-made weight matrices -------------------------------------------


def _diag(w, **kwargs) -> dict[str, np.ndarray]:
    w = np.asarray(w, np.float32)
    if w.ndim == 2:
        w = w[None, None]
    elif w.ndim == 3:
        w = w[None]
    out = attention_diagnostics_tensors(tf.constant(w), **kwargs)
    return {k.removeprefix("attn_"): float(v.numpy()[0]) for k, v in out.items()}


def test_identity_is_focused_diagonal_monotone_and_covers_everything():
    d = _diag(np.eye(4))
    assert d == pytest.approx(
        {"entropy": 0.0, "uncovered": 0.0, "diagonality": 1.0, "monotonicity": 1.0}, abs=1e-6
    )


def test_uniform_has_entropy_one_and_diagonality_zero():
    d = _diag(np.full((4, 4), 0.25))
    assert d == pytest.approx(
        {"entropy": 1.0, "uncovered": 0.0, "diagonality": 0.0, "monotonicity": 1.0}, abs=1e-6
    )
    # With 20 keys, 0.05 each is below the 0.1 threshold: no key is covered.
    assert _diag(np.full((20, 20), 0.05))["uncovered"] == pytest.approx(1.0)
    assert _diag(np.full((20, 20), 0.05), coverage_threshold=0.01)["uncovered"] == 0.0


def test_anti_diagonal_is_not_diagonal_and_not_monotone():
    d = _diag(np.eye(4)[::-1])
    assert d["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert d["diagonality"] == 0.0
    assert d["monotonicity"] == 0.0


def test_hand_computed_values():
    # Query 0 splits its weight over keys 0 and 1, queries 1 and 2 are on the diagonal.
    w = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    d = _diag(w)
    # entropy: (log 2 / log 3 + 0 + 0) / 3
    assert d["entropy"] == pytest.approx(math.log(2) / math.log(3) / 3, abs=1e-6)
    # positions 0, 1/2, 1 on both axes. D = 0.5 * 0.5 = 0.25;
    # U = mean|0 - k| + mean|1/2 - k| + mean|1 - k| = 1/2 + 1/3 + 1/2 = 4/3.
    assert d["diagonality"] == pytest.approx(1 - 0.25 / (4 / 3), abs=1e-6)
    assert d["monotonicity"] == 1.0
    # Most-attended keys 0, 2, 1, 3: one of three steps goes back.
    w = np.eye(4)[[0, 2, 1, 3]]
    assert _diag(w)["monotonicity"] == pytest.approx(2 / 3)
    # Key 3 never gets more than 0.05: one of four keys uncovered.
    w = [[0.9, 0.05, 0.05, 0.0], [0.05, 0.9, 0.05, 0.0], [0.2, 0.2, 0.55, 0.05]]
    assert _diag(w)["uncovered"] == pytest.approx(0.25)


def test_heads_are_averaged_for_entropy():
    w = np.stack([np.eye(4), np.full((4, 4), 0.25)])  # (heads, Q, K)
    assert _diag(w)["entropy"] == pytest.approx(0.5, abs=1e-6)


def test_padding_and_causal_masks_exclude_positions():
    padded = np.zeros((6, 6), np.float32)
    padded[:4, :4] = np.eye(4)
    padded[4:, :4] = 0.25  # padded queries (Attention does not zero them): must not count
    valid = np.zeros((1, 6, 6), bool)
    valid[:, :, :4] = True
    query_valid = np.array([[True] * 4 + [False] * 2])
    d = _diag(padded, valid=valid, query_valid=query_valid)
    assert d == pytest.approx(_diag(np.eye(4)), abs=1e-6)
    # The same through user masks.
    d = _diag(padded, query_mask=query_valid, key_mask=np.array([[True] * 4 + [False] * 2]))
    assert d == pytest.approx(_diag(np.eye(4)), abs=1e-6)
    # Causal uniform: each query spreads over the keys it may see. Query 0 has no choice
    # and is left out of the entropy; the others are uniform.
    causal = np.tril(np.ones((5, 5), bool))
    w = causal / causal.sum(-1, keepdims=True)
    d = _diag(w, valid=causal[None])
    assert d["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert d["diagonality"] == pytest.approx(0.0, abs=1e-6)


def test_example_without_valid_query_is_nan():
    d = _diag(np.eye(3), query_valid=np.zeros((1, 3), bool))
    assert all(math.isnan(v) for v in d.values())


# -- keras-hub --------------------------------------------------------------------------


def test_keras_hub_encoder_and_decoder():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(6)
    src = keras.Input((None,), dtype="int32")
    tgt = keras.Input((None,), dtype="int32")
    es = layers.Embedding(VOCAB, DIM, mask_zero=True)(src)
    et = layers.Embedding(VOCAB, DIM, mask_zero=True)(tgt)
    encoder = keras_hub.layers.TransformerEncoder(16, 2, name="encoder")
    decoder = keras_hub.layers.TransformerDecoder(16, 2, name="decoder")
    enc = encoder(es)
    model = keras.Model([src, tgt], decoder(et, enc))
    s, t = _tokens()
    got = extract_attention(model, [s, t], jit_compile=False)
    assert set(got) == {
        "encoder/self_attention_layer",
        "decoder/self_attention",
        "decoder/cross_attention",
    }
    # The encoder can return its own scores: they must match.
    emb_s = model.layers[2] if isinstance(model.layers[2], layers.Embedding) else None
    assert emb_s is not None
    _, expected = encoder(emb_s(s), return_attention_scores=True)
    np.testing.assert_allclose(got["encoder/self_attention_layer"], expected, atol=ATOL)
    # The decoder exposes no scores: check what must hold instead.
    self_w, cross_w = got["decoder/self_attention"], got["decoder/cross_attention"]
    assert cross_w.shape == (5, 2, 5, 7)
    upper = np.triu(np.ones((5, 5), bool), k=1)
    assert np.all(self_w[..., upper] == 0.0)
    src_pad = np.broadcast_to((s == 0)[:, None, None, :], cross_w.shape)
    assert np.all(cross_w[src_pad] == 0.0)
    real = (t != 0)[:, None, :]
    np.testing.assert_allclose(
        cross_w.sum(-1)[np.broadcast_to(real, cross_w.shape[:3])], 1.0, atol=1e-5
    )
    _assert_unhooked(model)


# -- tf.distribute ------------------------------------------------------------------------

DISTRIBUTED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras import layers
    from keras_erranalysis.compute._attention import extract_attention, attention_diagnostics
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        src = keras.Input((None,), dtype="int32"); tgt = keras.Input((None,), dtype="int32")
        init = keras.initializers.RandomNormal(stddev=2.0)
        emb_s = layers.Embedding(12, 8, mask_zero=True, embeddings_initializer=init)
        emb_t = layers.Embedding(12, 8, mask_zero=True, embeddings_initializer=init)
        es, et = emb_s(src), emb_t(tgt)
        cross = layers.MultiHeadAttention(2, 4, name="cross")
        model = keras.Model([src, tgt], cross(et, es))
    rng = np.random.default_rng(0)
    s = rng.integers(1, 12, (5, 7)); t = rng.integers(1, 12, (5, 4)); s[1, 3:] = 0
    _, expected = cross(emb_t(t), emb_s(s), return_attention_scores=True)
    for jit in (False, True):
        got = extract_attention(model, [s, t], jit_compile=jit, diagnostics=True)
        print("replicas", strategy.num_replicas_in_sync, "jit", jit,
              "shape", got["cross"].shape,
              "diff", float(np.abs(got["cross"] - np.asarray(expected)).max()))
    single = extract_attention(model, [s, t], diagnostics=True, batch_size=5)
    res = attention_diagnostics(model, ([s, t], None), keep=[3], batch_size=3)
    print("kept_diff", float(np.abs(res.weights["cross"][0] - np.asarray(expected)[3]).max()))
    print("diag_diff", max(float(np.abs(res.diagnostics[k] - single[k]).max())
                           for k in res.diagnostics))
    print("n", res.num_examples)
    """
)


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    runs = [line for line in lines if line.startswith("replicas")]
    assert len(runs) == 2, proc.stdout
    for line in runs:
        parts = line.split()
        assert parts[1] == "2"
        assert "shape (5, 2, 4, 7)" in line
        assert float(parts[-1]) < 1e-6
    values = dict(
        line.split() for line in lines if line.split()[0] in ("kept_diff", "diag_diff", "n")
    )
    assert float(values["kept_diff"]) < 1e-6
    assert float(values["diag_diff"]) < 1e-6
    assert values["n"] == "5"


# -- roles: which tokens label a heatmap's axes, from the graph, never the name ----------


def _misnamed_transformer():
    """Encoder self-, decoder self- and cross-attention whose names all say the wrong thing."""
    keras.utils.set_random_seed(3)
    src = keras.Input((None,), dtype="int32", name="src")
    tgt = keras.Input((None,), dtype="int32", name="tgt")
    es = layers.Embedding(VOCAB, DIM, mask_zero=True)(src)
    et = layers.Embedding(VOCAB, DIM, mask_zero=True)(tgt)
    enc = layers.MultiHeadAttention(2, 4, name="decoder_self_attention")(es, es)
    dec = layers.MultiHeadAttention(2, 4, name="dec_cross_attention")(et, et, use_causal_mask=True)
    cross = layers.MultiHeadAttention(2, 4, name="encoder_self_attention")(dec, enc)
    model = keras.Model([src, tgt], layers.Dense(VOCAB)(cross))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _RecurrentWithState(keras.Model):
    """Subclassed: a GRU decoder started from the encoder state, then self-attention named
    'encoder' (queries and keys reached by both inputs) and cross-attention named 'self'."""

    def __init__(self):
        super().__init__(name="recurrent")
        self.emb_s = layers.Embedding(VOCAB, DIM, mask_zero=True)
        self.emb_t = layers.Embedding(VOCAB, DIM, mask_zero=True)
        self.encoder = layers.GRU(DIM, return_sequences=True, return_state=True)
        self.decoder = layers.GRU(DIM, return_sequences=True)
        self.self_attn = layers.Attention(use_scale=True, name="encoder")
        self.cross_attn = layers.MultiHeadAttention(1, DIM, name="self")
        self.out = layers.Dense(VOCAB)

    def call(self, inputs):
        encoded, state = self.encoder(self.emb_s(inputs["src"]))
        decoded = self.decoder(self.emb_t(inputs["tgt"]), initial_state=state)
        decoded = self.self_attn([decoded, decoded], use_causal_mask=True)
        return self.out(self.cross_attn(decoded, encoded))


def _roles_and_report(model, src, tgt):
    from keras_erranalysis import compute_losses
    from keras_erranalysis.pipeline import layer_roles

    labels = np.concatenate([tgt[:, 1:], np.zeros_like(tgt[:, :1])], axis=1)
    x = {"src": src, "tgt": tgt}
    report = compute_losses(model, (x, labels), jit_compile=False)
    weights = extract_attention(model, x, jit_compile=False)
    return layer_roles(model, report, weights), report, weights


def _shifted_pair(n=4, t_src=6, t_tgt=5, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, VOCAB, (n, t_src)).astype("int32")
    tgt = rng.integers(3, VOCAB, (n, t_tgt)).astype("int32")
    tgt[:, 0] = 1  # the start token
    src[1, 4:] = 0
    tgt[1, 3:] = 0
    return src, tgt


def test_roles_come_from_the_graph_not_the_names():
    from keras_erranalysis.present import axis_tokens, example_heatmaps

    model = _misnamed_transformer()
    src, tgt = _shifted_pair()
    roles, report, weights = _roles_and_report(model, src, tgt)
    assert {path: role.kind for path, role in roles.items()} == {
        "decoder_self_attention": "encoder_self",
        "dec_cross_attention": "decoder_self",
        "encoder_self_attention": "cross",
    }
    assert all(role.decided_by == "graph" for role in roles.values())
    assert roles["encoder_self_attention"].key_input == "src"
    assert roles["dec_cross_attention"].key_input == "tgt"
    source_vocab = [f"s{i}" for i in range(VOCAB)]
    target_vocab = ["", "<s>"] + [f"t{i}" for i in range(2, VOCAB)]
    from keras_erranalysis.decoding import Vocabulary

    vocab, input_vocab = Vocabulary(target_vocab), Vocabulary(source_vocab)

    def tokens(path, row=1):
        return axis_tokens(
            report,
            row,
            path,
            weights[path].shape[-2:],
            vocab=vocab,
            input_vocab=input_vocab,
            role=roles[path],
        )

    src_tokens = [source_vocab[i] for i in src[1, :4]]
    tgt_in = [target_vocab[i] for i in tgt[1, :3]]  # <s> t.. t..: the shifted decoder inputs
    labels = [target_vocab[i] for i in report.label[1][: int(report.token_mask[1].sum())]]
    while labels[-1] == "":  # padding labels that count (MHA drops the Keras mask)
        labels.pop()
    assert tokens("decoder_self_attention") == (src_tokens, src_tokens)
    assert tokens("dec_cross_attention") == (labels, tgt_in)
    assert tgt_in[0] == "<s>" and labels[0] == tgt_in[1]  # keys are not the predictions
    assert tokens("encoder_self_attention") == (labels, src_tokens)
    figures = example_heatmaps(
        report,
        {p: w[[1]] for p, w in weights.items()},
        [1],
        names=["ex"],
        vocab=vocab,
        input_vocab=input_vocab,
        roles=roles,
    )
    axes = figures["ex_dec_cross_attention"].axes[0]
    assert axes.get_xlabel() == "keys (decoder input, shifted)"
    assert [t.get_text() for t in axes.get_xticklabels()] == tgt_in
    assert figures["ex_decoder_self_attention"].axes[0].get_ylabel() == "queries (source)"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_roles_of_a_subclassed_model_with_state_passed_from_the_encoder():
    from keras_erranalysis.compute import attention_roles

    model = _RecurrentWithState()
    src, tgt = _shifted_pair()
    model({"src": src, "tgt": tgt})
    roles = attention_roles(model, {"src": src, "tgt": tgt})  # decoder input from the graph
    by_name = {path.split("/")[-1]: role for path, role in roles.items()}
    # The decoder's queries and keys depend on both inputs (through the encoder state):
    assert by_name["encoder"].kind == "decoder_self"
    assert set(by_name["encoder"].query_inputs) == {"src", "tgt"}
    assert by_name["encoder"].key_input == "tgt"
    assert by_name["self"].kind == "cross" and by_name["self"].key_input == "src"


def test_roles_fall_back_to_shapes_when_the_call_names_no_query():
    from keras_erranalysis.compute import attention_roles

    class Opaque(layers.Layer):
        def call(self, a, b):
            scores = keras.ops.softmax(keras.ops.einsum("bqd,bkd->bqk", a, b))
            return keras.ops.einsum("bqk,bkd->bqd", scores, b)

    def handler(layer, call, args, kwargs):
        a, b = args
        return call(*args), keras.ops.softmax(keras.ops.einsum("bqd,bkd->bqk", a, b))

    register_attention_layer(Opaque, handler)
    try:
        src = keras.Input((None,), dtype="int32", name="src")
        tgt = keras.Input((None,), dtype="int32", name="tgt")
        es = layers.Embedding(VOCAB, DIM)(src)
        et = layers.Embedding(VOCAB, DIM)(tgt)
        model = keras.Model([src, tgt], Opaque(name="decoder_x")(et, es))
        inputs = {"src": np.ones((2, 6), "int32"), "tgt": np.ones((2, 4), "int32")}
        roles = attention_roles(model, inputs, shapes={"decoder_x": (4, 6)})
        assert roles["decoder_x"].kind == "cross" and roles["decoder_x"].decided_by == "shapes"
        assert roles["decoder_x"].key_input == "src"
        undecided = attention_roles(model, {"a": inputs["src"], "b": inputs["src"]},
                                    shapes={"decoder_x": (6, 6)})  # fmt: skip
        assert undecided == {}  # two inputs of that length: no guess, positions are drawn
    finally:
        unregister_attention_layer(Opaque)


# -- the watch list: right examples spread over lengths, replaced when one turns wrong ----


def test_watch_list_is_spread_over_lengths_not_the_first_right():
    from keras_erranalysis.analysis import update_watch_list

    lengths = np.arange(1, 101)
    correct = np.ones(100, bool)
    chosen = update_watch_list(lengths, correct, np.ones(100), 4).watch
    assert sorted(lengths[chosen].tolist()) == [13, 38, 63, 88]  # quantiles .125 ... .875
    # ties of length: the most confident, so the example likely stays right
    lengths = np.array([3, 3, 3, 9, 9])
    confidence = np.array([0.5, 0.9, 0.7, 0.6, 0.8])
    assert update_watch_list(lengths, np.ones(5, bool), confidence, 2).watch == [1, 4]


def test_watch_list_replaces_an_example_that_turns_wrong_and_fills_up_later():
    from keras_erranalysis.analysis import update_watch_list

    lengths = np.array([2, 5, 5, 8, 8, 6, 2, 9])
    confidence = np.linspace(0.5, 0.9, 8)
    # at the first epoch only two short words are right: a short list, not a guess
    first = update_watch_list(lengths, lengths == 2, confidence, 3)
    assert first.watch == [6, 0] and first.added == [6, 0]
    # later the longer words are right too: the empty slot is filled (with a long one)
    correct = np.ones(8, bool)
    second = update_watch_list(lengths, correct, confidence, 3, first.watch)
    assert second.watch[:2] == [6, 0] and len(second.watch) == 3
    assert lengths[second.added[0]] >= 8 and not second.replaced
    # one turns wrong: replaced in its slot by the right example nearest in length
    correct[6] = False
    third = update_watch_list(lengths, correct, confidence, 3, second.watch)
    assert third.replaced == [(6, third.watch[0])] and third.watch[1:] == second.watch[1:]
    assert lengths[third.watch[0]] == 5  # the nearest remaining length to 2
    # nothing right is left: noted, and the wrong one stays watched
    none_left = update_watch_list(lengths, np.zeros(8, bool), confidence, 3, third.watch)
    assert none_left.watch == third.watch and all(new is None for _, new in none_left.replaced)


def test_watch_notes_go_to_the_epoch_meta_and_one_line_per_change():
    from _presentation import sequence_report

    from keras_erranalysis.analysis import WatchUpdate
    from keras_erranalysis.pipeline import watch_notes

    report = sequence_report()
    update = WatchUpdate(watch=[0, 2], replaced=[(1, 2), (3, None)])
    notes, lines = watch_notes(4, report, update)
    assert notes["watch"] == [0, 2]
    assert notes["watch_replaced"][0] == {
        "example_id": 1,
        "length": 3,
        "replaced_by": 2,
        "replacement_length": 4,
    }
    assert "epoch 4: watched example 1 (length 3) turned wrong" in lines[0]
    assert "example 2 (length 4) is watched from the next epoch" in lines[0]
    assert "no right example is left" in lines[1]


def test_roles_of_keras_hub_blocks_nested_and_misnamed():
    keras_hub = pytest.importorskip("keras_hub")
    from keras_erranalysis.compute import attention_roles

    keras.utils.set_random_seed(7)
    src = keras.Input((None,), dtype="int32")
    tgt = keras.Input((None,), dtype="int32")
    es = layers.Embedding(VOCAB, DIM, mask_zero=True)(src)
    et = layers.Embedding(VOCAB, DIM, mask_zero=True)(tgt)
    enc = keras_hub.layers.TransformerEncoder(16, 2, name="decoder_block")(es)
    dec = keras_hub.layers.TransformerDecoder(16, 2, name="encoder_block")(et, enc)
    model = keras.Model([src, tgt], dec)
    s, t = _tokens()
    roles = attention_roles(model, {"input_0": s, "input_1": t})
    assert {path: (role.kind, role.key_input) for path, role in roles.items()} == {
        "decoder_block/self_attention_layer": ("encoder_self", "input_0"),
        "encoder_block/self_attention": ("decoder_self", "input_1"),
        "encoder_block/cross_attention": ("cross", "input_0"),
    }

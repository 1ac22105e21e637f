"""Tests of the attention heatmaps in keras_erranalysis.plotting."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from keras_erranalysis.present._attention_plots import plot_attention, plot_attention_overview  # noqa: E402


def _diagonal(heads: int, t_q: int, t_kv: int, *, pad_q: int = 0, pad_kv: int = 0):
    w = np.zeros((heads, t_q + pad_q, t_kv + pad_kv), np.float32)
    for h in range(heads):
        for i in range(t_q):
            j = min(round(i * (t_kv - 1) / max(t_q - 1, 1)) + h % 2, t_kv - 1)
            w[h, i, j] = 0.8
            w[h, i, (j + 1) % t_kv] += 0.2
    return w


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_mean_heatmap_with_tokens_crops_padding_and_labels_axes():
    w = _diagonal(2, 4, 5, pad_q=2, pad_kv=3)
    query, key = ["N", "UW0", "M", "OW1"], ["p", "n", "e", "u", "m"]
    fig = plot_attention(w, query, key)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    assert shown.shape == (4, 5)
    np.testing.assert_allclose(shown, w[:, :4, :5].mean(axis=0))
    assert _labels(ax.xaxis) == key
    assert _labels(ax.yaxis) == query
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert _png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_head_and_errors():
    w = _diagonal(3, 4, 4)
    fig = plot_attention(w, head=2)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w[2])
    assert "head 2" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="3 heads"):
        plot_attention(w, head=3)
    with pytest.raises(ValueError, match="swapped"):
        plot_attention(w, list("abcdefg"), list("abcd"))
    with pytest.raises(ValueError, match="one example"):
        plot_attention(w[None])
    with pytest.raises(ValueError, match="ax=None"):
        plot_attention(w, head="all", ax=Figure().add_subplot())


def test_all_heads_grid_shares_one_colour_scale():
    w = _diagonal(5, 4, 6)
    w[3] *= 0.5
    fig = plot_attention(w, list("abcd"), list("uvwxyz"), head="all")
    panels = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert len(panels) == 5
    for h, ax in enumerate(panels):
        np.testing.assert_allclose(ax.images[0].get_array(), w[h])
        assert ax.images[0].get_clim() == panels[0].images[0].get_clim()
        assert ax.get_title() == f"head {h}"
    # Tokens on the outer panels only (first column, last row).
    assert _labels(panels[0].yaxis) == list("abcd")
    assert set(_labels(panels[1].yaxis)) == {""}


def test_no_tokens_trims_trailing_zero_padding():
    w = _diagonal(1, 4, 5, pad_q=3, pad_kv=2)
    fig = plot_attention(w[0])
    assert fig.axes[0].images[0].get_array().shape == (4, 5)


def test_long_inputs_are_thinned_and_text_is_escaped():
    t = 512
    tokens = [f"w{i}" for i in range(t)]
    tokens[0] = "$x$"
    tokens[13] = " "
    w = _diagonal(2, t, t)
    fig = plot_attention(w, tokens, tokens)
    ax = fig.axes[0]
    x_labels, y_labels = _labels(ax.xaxis), _labels(ax.yaxis)
    assert 20 <= len(x_labels) <= 40 and 20 <= len(y_labels) <= 40
    assert x_labels[0] == r"0 \$x\$"  # position prefix, mathtext escaped
    assert x_labels[1] == "13 \u2423"  # a visible space
    assert ax.images[0].get_array().shape == (t, t)  # the weight spans the whole map
    png = _png(fig)
    assert len(png) > 10_000


def test_crop_to_the_region_holding_the_weight():
    w = np.zeros((1, 512, 512), np.float32)
    w[0, :, 100:200] = _diagonal(1, 512, 100)[0]
    fig = plot_attention(w, [str(i) for i in range(512)], [str(i) for i in range(512)])
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (512, 100)
    assert "keys 100-199 of 512" in ax.get_title()
    assert _labels(ax.xaxis)[0] == "100 100"
    # crop=False keeps everything; small maps are never cropped by "auto".
    full = plot_attention(w, crop=False)
    assert full.axes[0].images[0].get_array().shape == (512, 200)  # trailing zeros trimmed
    small = np.zeros((4, 6), np.float32)
    small[:, 2] = 1.0
    assert plot_attention(small, list("abcd"), list("abcdef")).axes[0].images[
        0
    ].get_array().shape == (4, 6)


def test_draws_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_attention(_diagonal(2, 3, 3), list("abc"), list("xyz"), ax=ax, title="mine")
    assert out is fig
    assert ax.get_title() == "mine"
    assert ax.images


def test_overview_is_a_layer_by_head_grid_for_one_example():
    weights = {
        "encoder/self": np.stack([_diagonal(4, 5, 5), _diagonal(4, 5, 5) * 0.5]),
        "decoder/cross": np.stack([_diagonal(2, 3, 5, pad_q=1), _diagonal(2, 3, 5, pad_q=1)]),
        "attn_entropy/encoder/self": np.zeros(2, np.float32),  # diagnostics are skipped
    }
    tokens = {"decoder/cross": (["a", "b", "c"], ["p", "q", "r", "s", "t"])}
    fig = plot_attention_overview(weights, 1, tokens=tokens)
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    # encoder: mean + 4 heads, decoder: mean + 2 heads
    assert len(heatmaps) == 5 + 3
    enc_mean = heatmaps[0].images[0].get_array()
    np.testing.assert_allclose(enc_mean, (_diagonal(4, 5, 5) * 0.5).mean(axis=0))
    dec_mean = heatmaps[5]
    assert dec_mean.images[0].get_array().shape == (3, 5)
    assert _labels(dec_mean.xaxis) == ["p", "q", "r", "s", "t"]
    assert "example 1" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="out of range"):
        plot_attention_overview(weights, 5)
    with pytest.raises(ValueError, match="no \\(batch, heads"):
        plot_attention_overview({"attn_entropy/x": np.zeros(3)}, 0)


def test_no_pyplot_figures_are_left_open():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_attention(_diagonal(2, 4, 4), head="all")
    plot_attention_overview({"l": _diagonal(2, 4, 4)[None]}, 0)
    assert plt.get_fignums() == before


def test_teacher_forced_and_generated_side_by_side():
    from keras_erranalysis.present import plot_teacher_forced_and_generated

    teacher = _diagonal(2, 4, 5, pad_q=2)
    generated = _diagonal(2, 6, 5)  # the decode buffer: rows after the end are cut
    fig = plot_teacher_forced_and_generated(
        teacher,
        generated,
        ["N", "UW", "M", "</s>"],
        ["N", "</s>"],  # stopped early: two rows, the end token's included
        ["p", "n", "e", "u", "m"],
        title="pneum<a>",
        key_label="keys (source)",
    )
    left, right = [ax for ax in fig.axes if ax.get_images()]
    assert _labels(left.yaxis) == ["N", "UW", "M", "</s>"]
    assert _labels(right.yaxis) == ["N", "</s>"]
    assert right.get_images()[0].get_array().shape == (2, 5)
    assert (
        left.get_ylabel() == "queries (reference)" and right.get_ylabel() == "queries (generated)"
    )
    assert _labels(left.xaxis) == _labels(right.xaxis) == ["p", "n", "e", "u", "m"]
    assert fig._suptitle.get_text() == "pneum<a>"  # plain text, never markup
    assert _png(fig).startswith(b"\x89PNG")

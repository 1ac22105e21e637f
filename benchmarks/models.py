"""The small seq2seq Transformer shared by the benchmarks."""

from __future__ import annotations


def transformer_seq2seq(vocab: int, length: int, *, d_model: int = 64, heads: int = 4):
    """Encoder self-attention, causal decoder self-attention, cross-attention, logits.

    Args:
        vocab: Source and target vocabulary size (also the number of output classes).
        length: Source and target length.
        d_model: Width of the model.
        heads: Attention heads per layer.

    Returns:
        An uncompiled ``keras.Model([source, target_in], logits)``.
    """
    import keras
    from keras import layers

    src = keras.Input((length,), dtype="int32", name="source")
    tgt = keras.Input((length,), dtype="int32", name="target_in")
    key_dim = d_model // heads
    enc = layers.Embedding(vocab, d_model, mask_zero=True)(src)
    enc = layers.LayerNormalization()(
        enc + layers.MultiHeadAttention(heads, key_dim, name="encoder_attention")(enc, enc)
    )
    dec = layers.Embedding(vocab, d_model, mask_zero=True)(tgt)
    dec = layers.LayerNormalization()(
        dec
        + layers.MultiHeadAttention(heads, key_dim, name="decoder_self_attention")(
            dec, dec, use_causal_mask=True
        )
    )
    dec = layers.LayerNormalization()(
        dec + layers.MultiHeadAttention(heads, key_dim, name="cross_attention")(dec, enc)
    )
    dec = layers.LayerNormalization()(dec + layers.Dense(d_model)(layers.Dense(128, "relu")(dec)))
    return keras.Model([src, tgt], layers.Dense(vocab, name="logits")(dec))


def demo_split(examples: int, *, val_fraction: float = 0.15):
    """The demo's CMUdict data, split as the demo splits it (the first 15% for validation).

    Returns:
        ``(data, train, validation)``: the encoded pairs, and ``(inputs, target)`` of each part.
    """
    from keras_erranalysis.demo import encode_pairs, load_cmudict, sample_pairs

    data = encode_pairs(sample_pairs(load_cmudict(), examples, seed=0))
    n_val = int(round(len(data) * val_fraction))
    inputs = data.inputs()
    train = ({k: v[n_val:] for k, v in inputs.items()}, data.target[n_val:])
    validation = ({k: v[:n_val] for k, v in inputs.items()}, data.target[:n_val])
    return data, train, validation

"""The demo model: attention seq2seq (bidirectional GRU encoder, GRU decoder, MHA)."""

from __future__ import annotations

from typing import Any


def build_model(
    num_chars: int,
    num_phones: int,
    *,
    embed_dim: int = 64,
    units: int = 128,
    heads: int = 1,
    learning_rate: float = 3e-3,
) -> Any:
    """A compiled attention seq2seq model: letters in, teacher-forced phoneme logits out.

    Letters are embedded and read by a bidirectional GRU; a GRU decoder, started from the
    encoder's final states, reads the previous phonemes; a ``MultiHeadAttention`` layer
    named ``cross_attention`` lets each decoder step look at the letters, and a dense
    layer predicts the next phoneme. Padding (id 0) is masked on both sides.

    Args:
        num_chars: Size of the letter vocabulary (with padding).
        num_phones: Size of the phoneme vocabulary (with padding, ``<s>``, ``</s>``).
        embed_dim: Embedding width.
        units: Decoder GRU width (each encoder direction has half).
        heads: Attention heads.
        learning_rate: Adam's learning rate.

    Returns:
        A compiled ``keras.Model`` with inputs ``letters`` and ``phonemes_in``.
    """
    import keras
    from keras import layers

    letters = keras.Input((None,), dtype="int32", name="letters")
    phonemes_in = keras.Input((None,), dtype="int32", name="phonemes_in")
    # Masks are given to the encoder and the attention explicitly (Bidirectional with
    # return_state does not always hand its mask on), so attention never looks at padding.
    letter_mask = keras.ops.not_equal(letters, 0)
    letter_vectors = layers.Embedding(
        num_chars, embed_dim, mask_zero=True, name="letter_embedding"
    )(letters)
    encoded, forward_state, backward_state = layers.Bidirectional(
        layers.GRU(units // 2, return_sequences=True, return_state=True), name="encoder"
    )(letter_vectors, mask=letter_mask)
    state = layers.Concatenate(name="encoder_state")([forward_state, backward_state])
    phoneme_vectors = layers.Embedding(
        num_phones, embed_dim, mask_zero=True, name="phoneme_embedding"
    )(phonemes_in)
    decoded = layers.GRU(units, return_sequences=True, name="decoder")(
        phoneme_vectors, initial_state=state
    )
    phoneme_mask = keras.ops.not_equal(phonemes_in, 0)
    context = layers.MultiHeadAttention(
        num_heads=heads, key_dim=units // heads, name="cross_attention"
    )(decoded, encoded, query_mask=phoneme_mask, value_mask=letter_mask)
    hidden = layers.Concatenate(name="decoder_and_context")([decoded, context])
    hidden = layers.Dense(units, activation="tanh", name="combine")(hidden)
    # Keras' merge layers drop masks in functional models, so the padded steps are zeroed
    # and Masking(0.0) restores the decoder mask: Keras' loss and metrics, and the
    # ErrorAnalysis pass, then skip padding.
    keep = keras.ops.expand_dims(keras.ops.cast(phoneme_mask, hidden.dtype), -1)
    hidden = layers.Multiply(name="zero_padding")([hidden, keep])
    hidden = layers.Masking(0.0, name="phoneme_mask")(hidden)
    logits = layers.Dense(num_phones, name="phoneme_logits")(hidden)
    model = keras.Model([letters, phonemes_in], logits, name="g2p")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model

"""Free-running (generated) outputs: greedy decoding, its columns, tables and rankings."""

import itertools

import numpy as np
import pandas as pd
import pytest
from _tasks import TOKENS, reverse_task

from keras_erranalysis import ErrorAnalysis, GenerationAnalysis, PassOptions, load_run
from keras_erranalysis.analysis import first_divergence, generated_metrics, rank_examples, rouge_l
from keras_erranalysis.compute import GenerationError, end_id_from_tokens, generate_greedy
from keras_erranalysis.compute._generate import cache_size
from keras_erranalysis.options import resolve_analyses


def _seq2seq(attention=False, ignore_class=None):
    import keras
    from keras import layers

    source = keras.Input((None,), dtype="int32", name="source")
    decoder_in = keras.Input((None,), dtype="int32", name="decoder_in")
    encoded, state = layers.GRU(24, return_sequences=True, return_state=True)(
        layers.Embedding(len(TOKENS), 12, mask_zero=True)(source)
    )
    decoded = layers.GRU(24, return_sequences=True)(
        layers.Embedding(len(TOKENS), 12, mask_zero=True)(decoder_in), initial_state=state
    )
    if attention:
        context = layers.MultiHeadAttention(1, 24, name="cross_attention")(decoded, encoded)
        decoded = layers.Concatenate()([decoded, context])
    model = keras.Model([source, decoder_in], layers.Dense(len(TOKENS))(decoded))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class)
    model.compile("adam", loss)
    return model


@pytest.fixture(scope="module")
def trained():
    import keras

    keras.utils.set_random_seed(0)
    source, decoder_in, labels = reverse_task()
    model = _seq2seq()
    model.fit(
        {"source": source, "decoder_in": decoder_in}, labels, epochs=8, batch_size=32, verbose=0
    )
    return model, source, decoder_in, labels


def _python_greedy(model, source, steps, start=1, end=2):
    """The greedy loop of the Keras examples: predict, take the last step, append, repeat."""
    out = np.zeros((len(source), steps), "int32")
    feed = np.full((len(source), 1), start, "int32")
    done = np.zeros(len(source), bool)
    for t in range(steps):
        logits = model.predict({"source": source, "decoder_in": feed}, verbose=0)
        token = logits[:, -1].argmax(-1).astype("int32")
        token[done] = 0
        out[:, t] = token
        done |= token == end
        feed = np.concatenate([feed, token[:, None]], axis=1)
    return out


@pytest.mark.parametrize("jit_compile", [False, True])
def test_greedy_matches_a_python_loop_and_compiles_once(trained, jit_compile):
    model, source, decoder_in, labels = trained
    inputs = {"source": source, "decoder_in": decoder_in}
    first = generate_greedy(model, inputs, labels, end_id=2, batch_size=64, jit_compile=jit_compile)
    expected = _python_greedy(model, source, decoder_in.shape[1])
    np.testing.assert_array_equal(first.ids, expected)
    assert first.start_id == 1 and first.decoder_input == "decoder_in"
    ends = [list(row).index(2) if 2 in row else len(row) for row in expected]
    np.testing.assert_array_equal(first.lengths, ends)
    compiled = cache_size(model)
    again = generate_greedy(model, inputs, labels, end_id=2, batch_size=64, jit_compile=jit_compile)
    np.testing.assert_array_equal(again.ids, first.ids)
    assert cache_size(model) == compiled  # 240 examples, 4 batches (last padded): one loop


def test_max_length_and_no_end_token(trained):
    model, source, decoder_in, labels = trained
    inputs = {"source": source[:10], "decoder_in": decoder_in[:10]}
    short = generate_greedy(model, inputs, labels[:10], max_length=2, jit_compile=False)
    assert short.ids.shape == (10, 2) and short.end_id is None
    np.testing.assert_array_equal(short.lengths, 2)


def test_inputs_that_do_not_fit_the_pattern_name_the_fix(trained):
    model, source, decoder_in, labels = trained
    varied = decoder_in.copy()
    varied[0, 0] = 5  # start ids differ
    with pytest.raises(GenerationError, match=r"GenerationAnalysis\(start_id=\.\.\.\)"):
        generate_greedy(model, {"source": source, "decoder_in": varied}, labels)
    with pytest.raises(GenerationError, match="method=your_decode_fn"):
        generate_greedy(model, {"source": source}, labels)


def test_end_id_from_the_vocabulary():
    assert end_id_from_tokens(TOKENS) == 2
    assert end_id_from_tokens(["[PAD]", "[START]", "[END]"]) == 2
    assert end_id_from_tokens(["", "a"]) is None


def test_exposure_gap_is_one_exactly_where_teacher_forced_right_and_generated_wrong():
    labels = np.array([[3, 4, 2, 0], [3, 4, 2, 0], [5, 2, 0, 0], [5, 6, 2, 0]])
    mask = labels != 0
    generated = [[3, 4], [3, 5], [5], [6, 6]]
    teacher_forced = np.array([True, True, False, False])
    columns, corpus = generated_metrics(
        labels, mask, generated, teacher_forced_correct=teacher_forced, end_id=2, vocab=TOKENS
    )
    np.testing.assert_array_equal(columns["generated_correct"], [1, 0, 1, 0])
    np.testing.assert_array_equal(columns["exposure_gap"], [0, 1, 0, 0])
    np.testing.assert_array_equal(columns["first_divergence"], [-1, 1, -1, 0])
    np.testing.assert_array_equal(columns["generated_edit_distance"], [0, 1, 0, 1])
    np.testing.assert_allclose(columns["generated_cer"], [0, 0.5, 0, 0.5])
    assert corpus["exact_match"] == 0.5 and corpus["exposure_gap"] == 0.25
    assert corpus["disagreement"] == 0.5  # rows 2 (gap) and 3 (generated right, TF wrong)


def test_rouge_l_by_hand_and_against_brute_force():
    # LCS("a b c d e", "a c e f") = "a c e" = 3: P = 3/4, R = 3/5, F1 = 2PR/(P+R) = 2/3.
    assert rouge_l([list("abcde")], [list("acef")])[0] == pytest.approx(2 / 3)
    assert rouge_l([[]], [[]])[0] == 1 and rouge_l([["a"]], [[]])[0] == 0

    def lcs(a, b):
        for size in range(min(len(a), len(b)), 0, -1):
            for picked in itertools.combinations(a, size):
                it = iter(b)
                if all(any(x == y for y in it) for x in picked):
                    return size
        return 0

    rng = np.random.default_rng(1)
    refs = [list(rng.integers(0, 3, rng.integers(1, 7))) for _ in range(60)]
    hyps = [list(rng.integers(0, 3, rng.integers(1, 7))) for _ in range(60)]
    brute = [2 * lcs(r, h) / (len(r) + len(h)) for r, h in zip(refs, hyps)]
    np.testing.assert_allclose(rouge_l(refs, hyps), brute)
    assert first_divergence([[1, 2]], [[1, 2, 3]])[0] == 2


def test_ranking_by_any_numeric_column():
    table = pd.DataFrame(
        {
            "loss": [0.1, 0.2, 0.3],
            "correct": [True, False, False],
            "generated_cer": [0.0, 0.9, 0.4],
            "generated_bleu": [1.0, 0.1, 0.5],
        }
    )
    assert rank_examples(table, by="generated_cer")["generated_cer"].tolist() == [0.9, 0.4, 0.0]
    assert rank_examples(table, by="generated_bleu")["generated_bleu"].tolist() == [0.1, 0.5, 1]
    with pytest.raises(ValueError, match="numeric column"):
        rank_examples(table, by="nonsense")


def test_option_and_name():
    assert resolve_analyses(["generate"]) == {GenerationAnalysis: GenerationAnalysis()}
    with pytest.raises(ValueError, match="greedy"):
        GenerationAnalysis(method="beam")


def test_callback_writes_generated_columns_and_the_generation_table(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    source, decoder_in, labels = reverse_task(n=160)
    x = {"source": source, "decoder_in": decoder_in}
    model = _seq2seq(attention=True, ignore_class=0)  # MHA drops the decoder mask
    callback = ErrorAnalysis(
        (x, labels),
        log_dir=tmp_path / "run",
        vocab=TOKENS,
        top_k=5,
        analyses=["attention", "generate"],
        pass_options=PassOptions(jit_compile=False, batch_size=64, ignore_class=0),
        verbose=0,
    )
    model.fit(x, labels, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    assert cache_size(model) == 1  # compiled at the first epoch, reused at the next ones
    run = load_run(tmp_path / "run")
    frame = run.frame()
    for column in (
        "generated_correct",
        "generated_edit_distance",
        "generated_cer",
        "generated_wer",
        "generated_bleu",
        "generated_chrf",
        "generated_rouge_l",
        "exposure_gap",
        "first_divergence",
        "generated_text",
    ):
        assert column in frame, column
    generated = np.asarray(run.array("generated"))
    assert generated.shape == labels.shape and generated.dtype == np.int32
    expected = _python_greedy(model, source, labels.shape[1])
    np.testing.assert_array_equal(generated, expected)  # the last epoch's model
    gap = frame["correct"].to_numpy() & (frame["generated_correct"].to_numpy() == 0)
    np.testing.assert_array_equal(frame["exposure_gap"], gap.astype(int))
    table = run.table("generation")
    assert len(table) == 1 and {"exact_match", "corpus_bleu", "chrf", "rouge_l"} <= set(table)
    assert table["exact_match"][0] == pytest.approx(frame["generated_correct"].mean())
    hardest = run.table("hardest")
    assert "generated_text" in hardest and "attn_entropy" in " ".join(hardest.columns)
    ranked = run.hardest(by="generated_cer", k=4)
    assert ranked["generated_cer"].is_monotonic_decreasing
    row = frame.iloc[0]
    ids = generated[0, : int(row["generated_length"])]
    assert row["generated_text"] == " ".join(TOKENS[i] for i in ids if TOKENS[i])


# -- attention at inference ----------------------------------------------------------------


@pytest.fixture(scope="module")
def with_attention():
    import keras

    keras.utils.set_random_seed(1)
    source, decoder_in, labels = reverse_task(n=160)
    model = _seq2seq(attention=True, ignore_class=0)
    x = {"source": source, "decoder_in": decoder_in}
    model.fit(x, labels, epochs=4, batch_size=32, verbose=0)
    return model, x, labels


def test_attention_at_inference_is_the_row_that_wrote_each_token(with_attention):
    from keras_erranalysis.compute import extract_attention
    from keras_erranalysis.compute._generate_attention import generate_attention

    model, x, labels = with_attention
    rows = [0, 5, 7, 11]
    picked = {name: values[rows] for name, values in x.items()}
    found = generate_attention(model, picked, labels[rows], layers=["cross_attention"], end_id=2)
    expected = generate_greedy(model, picked, labels[rows], end_id=2, jit_compile=False)
    np.testing.assert_array_equal(found.generated.ids, expected.ids)  # the same greedy loop
    weights = found.weights["cross_attention"]
    assert weights.shape == (4, 1, labels.shape[1], x["source"].shape[1])
    # Row t is what the query that wrote token t saw: the same as a pass fed that prefix.
    fed = np.concatenate([np.ones((4, 1), "int32"), found.generated.ids[:, :-1]], axis=1)
    fed_inputs = {"source": picked["source"], "decoder_in": fed}
    again = extract_attention(model, fed_inputs, jit_compile=False)["cross_attention"]
    for i, n in enumerate(found.generated.lengths):
        written = min(int(n) + 1, labels.shape[1])  # the end token's row too
        np.testing.assert_allclose(weights[i, :, :written], again[i, :, :written], atol=1e-5)
        assert np.all(weights[i, :, written:] == 0)  # nothing after the end
        np.testing.assert_allclose(weights[i, :, :written].sum(-1), 1.0, atol=1e-5)


def test_heatmaps_draw_the_free_running_map_next_to_the_teacher_forced_one(with_attention):
    import matplotlib.pyplot as plt

    from keras_erranalysis.options import AttentionAnalysis, Decoding
    from keras_erranalysis.pipeline import EpochPipeline

    model, x, labels = with_attention
    pipeline = EpochPipeline(
        data=(x, labels),
        decoding=Decoding(vocab=TOKENS).as_dict(),
        attention=AttentionAnalysis(heatmaps=2),
        generation=GenerationAnalysis(),
        pass_options={"jit_compile": False, "batch_size": 64, "ignore_class": 0},
        verbose=0,
    )
    output = pipeline.run(model, 1)
    figure = output.figures["attention_hardest1_cross_attention"]
    teacher, free = [ax for ax in figure.axes if ax.get_images()]
    assert teacher.get_ylabel() == "queries (reference)"
    assert free.get_ylabel() == "queries (generated)"
    row = int(np.argsort(-output.report.loss, kind="stable")[0])
    ids = output.generated[row]
    n = int(output.report.extra["generated_length"][row])
    written = ids[: n + 1] if n < len(ids) else ids  # with the end token
    assert [t.get_text() for t in free.get_yticklabels()] == [TOKENS[i] for i in written]
    reference = [TOKENS[i] for i in labels[row] if i]
    assert [t.get_text() for t in teacher.get_yticklabels()] == reference
    free = "right" if output.report.extra["generated_correct"][row] else "wrong"
    assert f"free-running {free}" in figure._suptitle.get_text()
    plt.close("all")


def test_exposure_summary_by_word_and_by_token():
    import types

    from keras_erranalysis.demo import exposure_summary

    label = np.array([[3, 4, 2, 0], [3, 5, 6, 2], [4, 4, 2, 0]])
    mask = label != 0
    prediction = np.array([[3, 4, 2, 0], [3, 6, 6, 2], [4, 4, 2, 0]])  # row 1: one wrong
    generated = np.array([[3, 4, 2, 0], [3, 6, 2, 0], [4, 5, 2, 0]])  # row 1 shifted; row 2 wrong
    report = types.SimpleNamespace(
        correct=(prediction == label).all(1),
        extra={"generated_correct": np.array([1, 0, 0])},
        label=label,
        token_mask=mask,
        prediction=prediction,
    )
    found = exposure_summary(report, generated)
    assert found["teacher_forced_right"] == pytest.approx(2 / 3)
    assert found["generated_right"] == pytest.approx(1 / 3)
    assert found["exposure_gap"] == 1 and found["disagree"] == pytest.approx(1 / 3)
    # counted tokens: 3 + 4 + 3; disagreeing: row 1 positions 2 and 3, row 2 position 1
    assert found["token_disagree"] == pytest.approx(3 / 10)

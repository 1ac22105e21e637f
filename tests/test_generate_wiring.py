"""Generation wired everywhere: compute_losses(generate=), analyze(generate=), the CLI, beams.

The callback, ``compute_losses`` and ``analyze`` (in chunks) must give the same free-running
outputs and the same ``generated_*`` columns for the same saved model and data.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from _tasks import TOKENS, reverse_task

from keras_erranalysis import ErrorAnalysis, PassOptions, analyze, load_run
from keras_erranalysis.analysis._sequence_metrics import GENERATED_COLUMNS
from keras_erranalysis.cli import main as cli_main
from keras_erranalysis.compute import compute_losses, generate_greedy
from keras_erranalysis.compute._generate import cache_size
from keras_erranalysis.options import generation_option


def _seq2seq():
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
    model = keras.Model([source, decoder_in], layers.Dense(len(TOKENS))(decoded))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    model.compile("adam", loss)
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained with the callback's 'generate' analysis, saved, and its data as npz."""
    import keras

    folder = tmp_path_factory.mktemp("genwire")
    keras.utils.set_random_seed(0)
    source, decoder_in, labels = reverse_task(96)
    x = {"source": source, "decoder_in": decoder_in}
    model = _seq2seq()
    callback = ErrorAnalysis(
        (x, labels),
        log_dir=folder / "callback",
        vocab=TOKENS,
        top_k=5,
        analyses=["generate"],
        pass_options=PassOptions(jit_compile=False, batch_size=64, ignore_class=0),
        verbose=0,
    )
    model.fit(x, labels, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", source=source, decoder_in=decoder_in, label=labels)
    return folder, model, x, labels


def _generated_columns(frame):
    return frame[[*GENERATED_COLUMNS, "generated_length", "generated_text"]]


def test_analyze_in_chunks_agrees_with_the_callback_on_a_saved_model(trained):
    folder, _, _, labels = trained
    analyze(
        folder / "model.keras",
        folder / "data.npz",
        folder / "analyzed",
        vocab=TOKENS,
        generate="greedy",
        chunk_size=40,  # 3 chunks: the corpus numbers must still be over all examples
        batch_size=64,
        jit_compile=False,
        verbose=0,
    )
    by_callback, by_analyze = load_run(folder / "callback"), load_run(folder / "analyzed")
    np.testing.assert_array_equal(by_analyze.array("generated"), by_callback.array("generated"))
    pd.testing.assert_frame_equal(
        _generated_columns(by_analyze.frame()), _generated_columns(by_callback.frame())
    )
    numbers = ["exact_match", "corpus_bleu", "chrf", "rouge_l", "exposure_gap", "disagreement"]
    pd.testing.assert_frame_equal(
        by_analyze.table("generation")[numbers], by_callback.table("generation")[numbers]
    )
    hardest = by_analyze.table("hardest")
    assert {"generated_text", "generated_cer", "exposure_gap"} <= set(hardest)
    frame = by_analyze.frame().set_index("example_id")
    for column in ("generated_cer", "generated_text"):  # joined after the merge, by id
        assert hardest[column].tolist() == frame.loc[hardest["example_id"], column].tolist()
    assert by_analyze.hardest(by="generated_cer", k=5)["generated_cer"].is_monotonic_decreasing


def test_compute_losses_generate_gives_the_callbacks_columns(trained):
    folder, model, x, labels = trained
    report = compute_losses(
        model,
        (x, labels),
        ignore_class=0,
        generate="greedy",
        vocab=TOKENS,
        batch_size=64,
        jit_compile=False,
        verbose=0,
    )
    frame = report.to_frame(vocab=TOKENS)
    pd.testing.assert_frame_equal(
        _generated_columns(frame), _generated_columns(load_run(folder / "callback").frame())
    )
    assert report.generated_texts(TOKENS) == frame["generated_text"].tolist()
    with pytest.raises(ValueError, match="generate="):
        dataclasses.replace(report, generated=None).generated_texts()
    with pytest.raises(ValueError, match="keep_inputs=True"):
        compute_losses(model, (x, labels), generate=True, keep_inputs=False, verbose=0)


def test_cli_analyze_generate_beam_and_end_id(trained, capsys):
    folder, model, x, labels = trained
    args = [
        "analyze",
        str(folder / "model.keras"),
        str(folder / "data.npz"),
        "-o",
        str(folder / "cli"),
        "--jit",
        "off",
        "-q",
    ]
    assert cli_main([*args, "--generate", "3", "--end-id", "2"]) == 0
    run = load_run(folder / "cli")
    expected = generate_greedy(model, x, labels, end_id=2, beam_width=3, jit_compile=False)
    np.testing.assert_array_equal(run.array("generated"), expected.ids)
    assert run.table("generation")["method"][0] == "beam3"
    assert cli_main([*args, "--generate", "beam"]) == 2
    assert "greedy, a beam width" in capsys.readouterr().err
    assert cli_main([*args, "--end-id", "2"]) == 1
    assert "--generate" in capsys.readouterr().err


def test_generation_option_forms():
    assert generation_option(None) is None and generation_option(False) is None
    assert generation_option("none") is None
    assert generation_option(True).method == "greedy"
    assert generation_option(1).method == "greedy" and generation_option("4").beam_width == 4
    with pytest.raises(ValueError, match="beam width"):
        generation_option(0)
    with pytest.raises(ValueError, match="beam width"):
        generation_option("beam")


def _log_prob(model, x, sequences, end=2):
    """Summed log-probability of each sequence (through its end token), teacher-forced."""
    import keras

    width = x["decoder_in"].shape[1]
    feed = np.zeros_like(x["decoder_in"])
    feed[:, 0] = 1
    targets = np.zeros_like(feed)
    counted = np.zeros(feed.shape, bool)
    for i, seq in enumerate(sequences):
        target = (list(seq) + [end])[:width]
        feed[i, 1 : len(target)] = target[:-1]
        targets[i, : len(target)] = target
        counted[i, : len(target)] = True
    logits = model.predict({"source": x["source"], "decoder_in": feed}, verbose=0)
    log_probs = np.asarray(keras.ops.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return (picked * counted).sum(axis=1)


def _python_beam(model, x, k, end=2):
    """Textbook beam search, one example at a time: keep the k best prefixes per step."""
    width = x["decoder_in"].shape[1]
    import keras

    out = []
    for i in range(len(x["source"])):
        beams = [((), 0.0, False)]
        for t in range(width):
            live = [b for b in beams if not b[2]]
            if not live:
                break
            feed = np.zeros((len(live), width), "int32")
            feed[:, 0] = 1
            for j, (seq, _, _) in enumerate(live):
                feed[j, 1 : len(seq) + 1] = seq
            source = np.repeat(x["source"][i : i + 1], len(live), axis=0)
            logits = model({"source": source, "decoder_in": feed}, training=False)
            log_probs = np.asarray(keras.ops.log_softmax(logits[:, t], axis=-1))
            candidates = [b for b in beams if b[2]]
            for j, (seq, score, _) in enumerate(live):
                for token, value in enumerate(log_probs[j]):
                    candidates.append((seq + (token,), score + float(value), token == end))
            beams = sorted(candidates, key=lambda b: -b[1])[:k]
        best = max(beams, key=lambda b: b[1])[0]
        out.append(list(best[: best.index(end)] if end in best else best))
    return out


def test_beam_search_matches_a_textbook_beam_and_compiles_once(trained):
    _, model, x, labels = trained
    part = {name: value[:12] for name, value in x.items()}
    beams = generate_greedy(
        model, part, labels[:12], end_id=2, beam_width=3, batch_size=8, jit_compile=False
    )
    assert beams.sequences() == _python_beam(model, part, 3)
    compiled = cache_size(model)
    again = generate_greedy(
        model, part, labels[:12], end_id=2, beam_width=3, batch_size=8, jit_compile=False
    )
    np.testing.assert_array_equal(again.ids, beams.ids)
    assert cache_size(model) == compiled
    one = generate_greedy(model, part, labels[:12], end_id=2, beam_width=1, jit_compile=False)
    greedy = generate_greedy(model, part, labels[:12], end_id=2, jit_compile=False)
    np.testing.assert_array_equal(one.ids, greedy.ids)
    # Beam search finds sequences at least as likely as greedy's here (not a theorem).
    found, best = (
        _log_prob(model, part, beams.sequences()),
        _log_prob(model, part, greedy.sequences()),
    )
    assert (found >= best - 1e-4).mean() >= 0.9

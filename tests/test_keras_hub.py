"""keras-hub task models: the callback on a tiny BART Seq2SeqLM and a tiny GPT-2 CausalLM.

Both are built from small configs with random weights, and their byte-pair tokenizers from
a vocabulary and merges trained here on the test's own sentences (no download). ``fit``
gets raw text and maps the task's preprocessor over it; the callback gets the same
dataset. Checked: per-example losses equal Keras' unreduced loss, the hardest table reads
as words through the task's tokenizer, and ``generated_text`` equals the task's own
``generate()`` for the same rows.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_erranalysis import ErrorAnalysis, GenerationAnalysis, PassOptions, load_run
from keras_erranalysis.compute._hub import task_data

needs_hub = pytest.mark.skipif(
    importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed"
)

WORDS = "the cat dog sat ran on mat big small red blue house tree under over a".split()
N = 32
# Losses: the pass (float32, XLA off) against Keras' own unreduced cross-entropy.
LOSS_TOLERANCE = 1e-5


def _sentences(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 6)))) for _ in range(N)]


def _bpe(texts: list[str], special: list[str]) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary and merges trained on ``texts`` (large enough that
    every word, with or without its leading space, is one token)."""
    import tokenizers  # keras-hub's own dependency

    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        texts, vocab_size=400, min_frequency=1, special_tokens=special, show_progress=False
    )
    merges = json.loads(trainer.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list | tuple) else m for m in merges]
    return trainer.get_vocab(), merges


def _unreduced(task, x, y, sw):
    """Keras' per-token loss, weighted and reduced per example (sum and mean)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    per_token = np.asarray(loss(y, task(x, training=False)))
    weight = np.asarray(sw, np.float64)
    total = (per_token * weight).sum(axis=1)
    return total, total / weight.sum(axis=1)


def _compile(task):
    task.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
        sampler="greedy",  # the default top-k samples: generate() would vary call to call
    )


def _fit(task, ds, tmp_path, generation):
    callback = ErrorAnalysis(
        ds,
        log_dir=tmp_path / "run",
        top_k=8,
        analyses=[generation],
        pass_options=PassOptions(jit_compile=False),
        verbose=0,
    )
    task.fit(ds, epochs=1, callbacks=[callback], verbose=0)
    run = load_run(tmp_path / "run")
    return callback, run, run.table("hardest", run.epochs[-1])


def _check_losses(task, report, x, y, sw):
    total, mean = _unreduced(task, x, y, sw)
    order = report.example_id
    np.testing.assert_allclose(report.loss_sum, total[order], rtol=LOSS_TOLERANCE, atol=1e-6)
    np.testing.assert_allclose(report.loss_mean, mean[order], rtol=LOSS_TOLERANCE, atol=1e-6)


@needs_hub
def test_bart_seq2seq_lm(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(0)
    sources = _sentences(0)
    targets = [" ".join(reversed(s.split())) for s in sources]
    vocab, merges = _bpe(sources + targets, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = keras_hub.models.BartTokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.BartSeq2SeqLMPreprocessor(
        tokenizer=tokenizer, encoder_sequence_length=10, decoder_sequence_length=10
    )
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    task = keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=preprocessor)
    _compile(task)
    raw = {"encoder_text": sources, "decoder_text": targets}
    ds = tf.data.Dataset.from_tensor_slices(raw).batch(16)

    callback, run, hardest = _fit(task, ds, tmp_path, GenerationAnalysis())

    report = callback.last_report
    x, y, sw = preprocessor(raw)  # eager: the same ids as the tf.data path
    np.testing.assert_array_equal(report.inputs["encoder_token_ids"], x["encoder_token_ids"])
    _check_losses(task, report, x, y, sw)
    # Decoded through the task's tokenizer: the words of the sentences, no special tokens.
    for _, row in hardest.iterrows():
        assert row["label_text"] == targets[row["example_id"]]
        assert row["input_text"] == sources[row["example_id"]]
    # generated_text is what the task's own generate() returns for those rows.
    rows = hardest.drop_duplicates("example_id")
    expected = task.generate(sources)  # all rows: the batch shape the analysis compiled
    assert rows["generated_text"].tolist() == [expected[i] for i in rows["example_id"]]
    for column in ("generated_correct", "generated_cer", "exposure_gap"):
        assert column in hardest.columns
    assert run.array("generated", run.epochs[-1]).shape[0] == N


@needs_hub
def test_gpt2_causal_lm(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(0)
    texts = _sentences(1)
    vocab, merges = _bpe(texts, ["<|endoftext|>"])
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=10
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    task = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    _compile(task)
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(16)

    # The prompt: the start token and the first two words; the rest is generated.
    callback, run, hardest = _fit(task, ds, tmp_path, GenerationAnalysis(prompt_length=3))

    report = callback.last_report
    x, y, sw = preprocessor(texts)
    np.testing.assert_array_equal(report.inputs["token_ids"], x["token_ids"])
    _check_losses(task, report, x, y, sw)
    for _, row in hardest.iterrows():
        assert row["label_text"] == texts[row["example_id"]]
    rows = hardest.drop_duplicates("example_id")
    prompts = [" ".join(text.split()[:2]) for text in texts]
    # each word is one token: the prompt text tokenizes back to the same two ids
    for i in rows["example_id"]:
        assert list(np.asarray(tokenizer(prompts[i]))) == list(np.asarray(x["token_ids"])[i, 1:3])
    expected = task.generate(prompts, strip_prompt=True)  # all rows, as the analysis
    assert rows["generated_text"].tolist() == [expected[i] for i in rows["example_id"]]


def test_raw_text_in_arrays_is_refused():
    class FakeTask:
        backbone = object()
        preprocessor = object()

        def preprocess_samples(self, x, y=None, sample_weight=None):  # pragma: no cover
            return x

    with pytest.raises(ValueError, match="tf.data.Dataset"):
        task_data(FakeTask(), (np.array(["a b", "c d"]), None))


def test_one_tensorflow_is_installed():
    """keras-hub's tensorflow-text requires `tensorflow` by name: installed beside
    tensorflow-cpu it puts a second copy into the same folder, and pip check is silent."""
    names = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"}
    found = sorted(
        {
            dist.metadata["Name"].lower().replace("_", "-")
            for dist in importlib.metadata.distributions()
            if dist.metadata["Name"]
        }
        & names
    )
    assert len(found) <= 1, (
        f"Two TensorFlow distributions are installed ({found}) in one folder. Install "
        "with the `hub` (or `dev`) extra alone, never with `cpu`: see the README's "
        "'Installing for CPU or GPU'."
    )


class TopKSampler:
    """Named as keras-hub's random sampler."""


class _FakeCausalLM:
    """Duck-typed like a keras-hub CausalLM: its generate writes 7, 8, end after the prompt."""

    backbone = object()
    preprocessor = SimpleNamespace(
        tokenizer=SimpleNamespace(end_token_id=2, pad_token_id=0, special_token_ids=[0, 1, 2])
    )
    sampler = TopKSampler()

    def preprocess_samples(self, x, y=None, sample_weight=None):  # pragma: no cover
        return x

    def make_generate_function(self):
        def generate(batch, stop_token_ids=None):
            ids = np.array(batch["token_ids"])
            mask = np.array(batch["padding_mask"])
            for row, prompt in zip(ids, mask.sum(axis=1)):
                row[prompt : prompt + 3] = [7, 8, stop_token_ids[0]]
            written = np.arange(ids.shape[1])[None, :] < mask.sum(axis=1)[:, None] + 3
            return {"token_ids": ids, "padding_mask": written}

        return generate


def test_generate_task_cuts_prompt_and_warns_for_a_random_sampler():
    from keras_erranalysis.compute._hub import generate_task

    ids = np.array([[1, 4, 5, 6, 2, 0], [1, 5, 4, 2, 0, 0]])
    counted = np.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)  # row 0: prompt masked
    with pytest.warns(RuntimeWarning, match='sampler="greedy"'):
        generated, reference = generate_task(
            _FakeCausalLM(), {"token_ids": ids}, counted, end_id=2, batch_size=4
        )
    assert generated.sequences() == [[7, 8], [7, 8]]
    # row 0's prompt is the start and the two uncounted tokens; row 1's the start alone
    np.testing.assert_array_equal(reference, counted)
    with pytest.warns(RuntimeWarning):
        _, reference = generate_task(
            _FakeCausalLM(), {"token_ids": ids}, counted, end_id=2, prompt_length=3
        )
    np.testing.assert_array_equal(reference[1], [False, False, True, False, False, False])


def test_generate_task_without_preprocessor_names_the_fix():
    from keras_erranalysis.compute import GenerationError
    from keras_erranalysis.compute._hub import generate_task

    task = _FakeCausalLM()
    task.preprocessor = None
    with pytest.raises(GenerationError, match="task.preprocessor"):
        generate_task(task, {"token_ids": np.ones((2, 4), int)}, np.ones((2, 4), bool))


class _FakeTextTask:
    """Duck-typed like a keras-hub task whose preprocessor turns text into lengths."""

    backbone = object()
    preprocessor = object()

    def preprocess_samples(self, x, y=None, sample_weight=None):
        length = tf.strings.length(x)[:, None]
        return {"token_ids": length}, length + 1, tf.ones_like(length, tf.float32)


def test_raw_text_dataset_goes_through_the_preprocessor_once_in_order():
    from keras_erranalysis.compute._hub import preprocessed_data

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    raw = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    task = _FakeTextTask()
    mapped = [b[1].numpy().ravel().tolist() for b in task_data(task, raw)]
    kept = [b[1].numpy().ravel().tolist() for b in preprocessed_data(task, raw)]
    assert mapped == kept == [[2, 3], [4, 5], [6]]  # same batches, same order
    ready = preprocessed_data(task, raw)
    assert task_data(task, ready) is ready  # model inputs already: used as they are


@needs_hub
def test_vocabulary_from_a_word_piece_tokenizer():
    import keras_hub

    from keras_erranalysis import Vocabulary

    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "the", "cat", "##s", "sat"]
    )
    ids = np.asarray(tokenizer("the cats sat")).tolist()
    assert ids == [2, 3, 4, 5]
    assert Vocabulary.from_any(tokenizer).decode(ids).strip() == "the cats sat"

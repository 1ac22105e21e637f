"""Presentation details of issue 17, item 10: what tables and terminals show."""

import numpy as np
import pytest
from _presentation import classification_report, sequence_report

from keras_erranalysis.present._text import one_line


def test_tokens_shows_blanks_for_uncounted_positions():
    report = sequence_report(6)  # odd rows: the last position is padding
    report.label[1, -1] = -100  # an ignored label, as Keras' ignore_class writes it
    table = report.tokens(1, vocab=["", "a", "b", "c", "d", "e"])
    uncounted = table[~table["counted"]]
    assert len(uncounted) == 1
    assert uncounted[["loss", "confidence", "true_prob", "margin"]].isna().all(axis=None)
    assert uncounted["label_token"].tolist() == [""] and "<-100>" not in table.to_string()
    counted = table[table["counted"]]
    assert counted[["loss", "confidence"]].notna().all(axis=None)


@pytest.mark.parametrize("pad", ["<pad>", "[PAD]", ""])
def test_input_text_drops_padding_tokens(pad):
    report = sequence_report(4, t=4)
    report.inputs = {"tokens": np.array([[1, 2, 0, 0], [3, 0, 0, 0], [0, 0, 1, 1], [0] * 4])}
    assert report.input_texts([pad, "a", "b", "c"]) == ["a b", "c", "a a", ""]


def test_input_text_keeps_a_real_token_at_id_zero():
    report = sequence_report(4, t=3)
    report.inputs = {"tokens": np.array([[0, 1, 0]] * 4)}
    assert report.input_texts(["zero", "one"]) == ["zero one zero"] * 4


@pytest.mark.parametrize(
    "control", ["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200f", "\u061c"]
)
def test_bidi_controls_never_reach_the_terminal(control):
    text = one_line(f"abc{control}gpj.exe")
    assert control not in text and "abc" in text and "gpj.exe" in text


def test_classifier_tables_drop_constant_token_columns():
    frame = classification_report(5).to_frame()
    assert "token_accuracy" not in frame.columns and "n_tokens" not in frame.columns
    seq = sequence_report(4).to_frame()
    assert "token_accuracy" in seq.columns and "n_tokens" in seq.columns

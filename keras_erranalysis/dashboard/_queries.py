"""The dashboard's queries: what each HTTP route of the Error Analysis plugin answers.

:class:`Dashboard` takes a request's parameters (strings, as they come in the URL) and
returns JSON-ready dicts; it imports no TensorBoard, so it is tested and benchmarked
without a server. PLUGIN_API.md (and the guide) describe every route. Run folders are read
memory-mapped; a request touches only the rows it shows, plus cached whole-column work
(sort orders, masks) bounded by :class:`~keras_erranalysis.dashboard._store.BoundedCache`.

Example:
    >>> dashboard = Dashboard("runs")  # doctest: +SKIP
    >>> dashboard.examples({"run": "erranalysis", "filter": '{"correct": false}'})  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_erranalysis.dashboard import _aggregates
from keras_erranalysis.dashboard._catalog import RunCatalog
from keras_erranalysis.dashboard._filters import (
    FILTER_KEYS,
    canonical,
    filter_mask,
    parse_filter,
)
from keras_erranalysis.dashboard._store import (
    DYNAMICS_COLUMNS,
    TEXT_COLUMNS,
    BoundedCache,
    QueryError,
    RunView,
)
from keras_erranalysis.run import RunFormatError

MAX_LIMIT = 200
# Pages within the first TOP_K rows of a sort not yet cached come from a partition.
TOP_K = 10_000
MAX_CHARS = 200
NEIGHBORS = 10
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class Dashboard:
    """Answers the Error Analysis dashboard's requests over the runs under one logdir.

    Args:
        logdir: TensorBoard's logdir: one run folder, or a folder holding runs at any depth.
        cache_bytes: Bound on the cache of derived arrays (sort orders, masks, text); at a
            million examples a sort order takes 4 MB and a filter's mask 1 MB.

    Example:
        >>> dashboard = Dashboard("runs")  # doctest: +SKIP
        >>> [r["run"] for r in dashboard.runs()["runs"]]  # doctest: +SKIP
        ['mnist', 'mnist_noisy']
    """

    def __init__(self, logdir: str | os.PathLike, *, cache_bytes: int = 128 << 20) -> None:
        self.logdir = Path(logdir)
        self.cache = BoundedCache(cache_bytes)
        self.catalog = RunCatalog(self.logdir, self.cache)

    # -- runs --------------------------------------------------------------------------

    def runs(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``GET /runs``: every run under the logdir with what it holds."""
        listed = []
        for name in self.catalog.names():
            try:
                view = self.catalog.view(name)
                if not view.run.epochs:
                    continue
                last = view.run.epochs[-1]
                names = view.class_names(last)
                listed.append(
                    {
                        "run": name,
                        "epochs": list(view.run.epochs),
                        "n_examples": view.n_examples(last),
                        "task": view.task(last),
                        "columns": view.columns(last),
                        "label_names": (
                            names.tokens
                            if names is not None and not view.is_sequence(last)
                            else None
                        ),
                        "has_embeddings": "embedding" in view.meta(last).get("vectors", {}),
                        "has_generation": "generated" in view.meta(last).get("vectors", {}),
                        "filters": list(FILTER_KEYS),
                    }
                )
            except (QueryError, RunFormatError, OSError, KeyError, ValueError):
                continue  # a damaged or half-written run is left out of the list
        return {"runs": listed}

    def _view_epoch(self, params: Mapping[str, Any]) -> tuple[RunView, int]:
        view = self.catalog.view(params.get("run"))
        return view, view.epoch(params.get("epoch"))

    # -- masks and orders --------------------------------------------------------------

    def mask(self, view: RunView, epoch: int, spec: Mapping[str, Any]) -> np.ndarray | None:
        """The rows a parsed filter keeps (None: all), cached per (run, epoch, filter)."""
        if not spec:
            return None
        return self.cache.get(
            (view.name, epoch, "mask", canonical(spec)),
            lambda: filter_mask(view, epoch, spec, flag_mask=self.flag_mask),
        )

    def flag_mask(self, view: RunView, epoch: int, flag: str) -> np.ndarray:
        """Rows carrying a flag.

        Flags: ``nonfinite``, ``likely_mislabeled``, ``health:<check>``, ``slice:<name>``.
        """
        if flag == "nonfinite":
            return np.asarray(view.column("nonfinite", epoch))
        if flag == "likely_mislabeled":
            return _aggregates.mislabeled_mask(view, epoch)
        if flag.startswith("health:"):
            return _aggregates.health_mask(view, epoch, flag.split(":", 1)[1])
        if flag.startswith("slice:"):
            name = flag.split(":", 1)[1]
            for row in self.why({"run": view.name, "epoch": epoch})["slices"]:
                if row["name"] == name:
                    found = self.mask(view, epoch, parse_filter(row["filter"]))
                    return np.ones(view.n_examples(epoch), bool) if found is None else found
            raise QueryError(f"No slice {name!r} in epoch {epoch}: GET ./why lists the slices.")
        raise QueryError(
            f"Unknown flag {flag!r}; flags are nonfinite, likely_mislabeled, health:<check> "
            "and slice:<name>."
        )

    def selection(
        self, view: RunView, epoch: int, spec: Mapping[str, Any], sort: str | None, order: str
    ) -> np.ndarray:
        """Matched rows in display order (cached per filter and sort)."""
        if order not in ("asc", "desc"):
            raise QueryError(f"order must be asc or desc, got {order!r}.")
        if sort and sort not in view.columns(epoch):
            raise QueryError(
                f"Cannot sort by {sort!r}: no such column in epoch {epoch}; columns are "
                f"{view.columns(epoch)}."
            )

        def make() -> np.ndarray:
            mask = self.mask(view, epoch, spec)
            if not sort:
                rows = np.arange(view.n_examples(epoch), dtype=np.int32)
                rows = rows if mask is None else np.flatnonzero(mask).astype(np.int32)
                return rows[::-1].copy() if order == "desc" else rows
            ranked = view.order(sort, epoch, descending=order == "desc")
            return ranked if mask is None else ranked[mask[ranked]]

        key = (view.name, epoch, "selection", canonical(spec), sort or "", order)
        return self.cache.get(key, make)

    # -- rows --------------------------------------------------------------------------

    def rows(
        self, view: RunView, epoch: int, rows: np.ndarray, *, max_chars: int | None = MAX_CHARS
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """The columns and one JSON-ready dict per row (text cut to ``max_chars``)."""
        numeric = view.numeric_columns(epoch)
        texts = view.text_columns(epoch)
        out: list[dict[str, Any]] = [{} for _ in rows]
        for name in numeric:
            values = _json_values(_values(view, epoch, name, rows))
            for row, value in zip(out, values):
                row[name] = value
        for name in texts:
            for row, text in zip(out, view.texts(name, epoch, rows)):
                if max_chars is not None and len(text) > max_chars:
                    row[name] = text[:max_chars]
                    row[f"{name}__truncated"] = True
                else:
                    row[name] = text
        return [*numeric, *texts], out

    def examples(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /examples``: one page of the filtered, sorted examples."""
        view, epoch = self._view_epoch(params)
        spec = parse_filter(params.get("filter"))
        offset, limit = _page(params)
        sort = params.get("sort") or None
        order = _order(params, sort)
        key = (view.name, epoch, "selection", canonical(spec), sort or "", order)
        descending = order == "desc"
        first = None
        if (
            sort
            and offset + limit <= TOP_K
            and self.cache.peek(key) is None
            and sort in view.columns(epoch)
            and not view.has_order(sort, epoch, descending)
        ):
            # First pages of a sort not made yet: a partition, not a sort of every row.
            mask = self.mask(view, epoch, spec)
            matched = None if mask is None else np.flatnonzero(mask)
            total = view.n_examples(epoch) if matched is None else matched.size
            first = view.first_rows(sort, epoch, descending, matched, offset + limit)
        if first is not None:
            page = np.asarray(first[offset:], dtype=np.int64)
        else:
            chosen = self.selection(view, epoch, spec, sort, order)
            total = chosen.size
            page = np.asarray(chosen[offset : offset + limit], dtype=np.int64)
        columns, rows = self.rows(view, epoch, page)
        return {
            "total": int(total),
            "n_examples": view.n_examples(epoch),
            "offset": offset,
            "columns": columns,
            "rows": rows,
        }

    def compare(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /compare``: a page of run R joined with run ``other`` on example ids.

        The other run is the baseline: ``changed`` is ``fixed`` where R is right and the
        other wrong, ``broken`` the reverse, ``same`` otherwise and null where the example
        is not in the other run. ``other_epoch`` defaults to the same epoch when the other
        run has it, else its last; ``change=fixed|broken|same`` keeps only those rows.
        """
        view, epoch = self._view_epoch(params)
        other = self.catalog.view(params.get("other"))
        other_epoch = params.get("other_epoch")
        if other_epoch in (None, "") and epoch in other.run.epochs:
            other_epoch = epoch
        other_epoch = other.epoch(other_epoch)
        spec = parse_filter(params.get("filter"))
        offset, limit = _page(params)
        joined = self._joined(view, epoch, other, other_epoch)
        change = params.get("change") or None
        sort = params.get("sort") or None
        order = _order(params, sort)
        key = (view.name, epoch, other.name, other_epoch, canonical(spec), change, sort, order)

        def make() -> np.ndarray:
            own = [c for c in view.columns(epoch)]
            if sort and sort not in own and sort not in ("loss_other", "loss_change"):
                raise QueryError(
                    f"Cannot sort by {sort!r}; use a column of the run, loss_other or loss_change."
                )
            if sort in ("loss_other", "loss_change"):
                mask = self.mask(view, epoch, spec)
                values = joined["loss_other"]
                if sort == "loss_change":
                    values = np.asarray(view.column("loss", epoch), np.float64) - values
                ranked = np.argsort(-values if order == "desc" else values, kind="stable")
                chosen = ranked if mask is None else ranked[mask[ranked]]
            else:
                chosen = self.selection(view, epoch, spec, sort, order)
            if change:
                if change not in ("fixed", "broken", "same"):
                    raise QueryError(f"change must be fixed, broken or same, got {change!r}.")
                codes = {"fixed": 1, "broken": 2, "same": 0}
                chosen = chosen[joined["changed"][chosen] == codes[change]]
            return chosen

        chosen = self.cache.get(("compare",) + key, make)
        page = np.asarray(chosen[offset : offset + limit], dtype=np.int64)
        columns, rows = self.rows(view, epoch, page)
        at = joined["rows"][page]
        found = at >= 0
        other_columns = [c for c in other.numeric_columns(other_epoch) if c != "example_id"]
        for name in other_columns:
            shown = _json_values(_values(other, other_epoch, name, np.maximum(at, 0)))
            for row, value, ok in zip(rows, shown, found):
                row[f"{name}_other"] = value if ok else None
        names = {0: "same", 1: "fixed", 2: "broken", -1: None}
        for row, code in zip(rows, joined["changed"][page]):
            row["changed"] = names[int(code)]
        return {
            "total": int(chosen.size),
            "n_examples": view.n_examples(epoch),
            "offset": offset,
            "other_epoch": other_epoch,
            "columns": [*columns, *(f"{c}_other" for c in other_columns), "changed"],
            "rows": rows,
        }

    def _joined(self, view: RunView, epoch: int, other: RunView, other_epoch: int) -> dict:
        def make() -> dict[str, np.ndarray]:
            at = other.rows_of(other_epoch, np.asarray(view.ids(epoch)))
            found = at >= 0
            loss = np.asarray(other.column("loss", other_epoch), np.float64)[np.maximum(at, 0)]
            loss[~found] = np.nan
            right = np.asarray(view.column("correct", epoch), bool)
            before = np.asarray(other.column("correct", other_epoch), bool)[np.maximum(at, 0)]
            changed = np.where(right & ~before, 1, np.where(~right & before, 2, 0)).astype(np.int8)
            changed[~found] = -1
            return {"rows": at, "loss_other": loss, "changed": changed}

        return self.cache.get((view.name, epoch, other.name, other_epoch, "joined"), make)

    # -- one example -------------------------------------------------------------------

    def example(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /example``: one example in full: text, tokens, heatmaps, trajectory, neighbours."""
        view, epoch = self._view_epoch(params)
        example_id = _int_param(params, "id")
        row = int(view.rows_of(epoch, np.array([example_id]))[0])
        if row < 0:
            raise QueryError(
                f"No example with id {example_id} in epoch {epoch} of run {view.name!r}.", 404
            )
        columns, (fields,) = self.rows(view, epoch, np.array([row]), max_chars=None)
        texts = {name: fields.get(name) for name in TEXT_COLUMNS}
        return {
            "example_id": example_id,
            "input_text": texts["input_text"],
            "label_text": texts["label_text"],
            "prediction_text": texts["prediction_text"],
            "generated_text": texts["generated_text"],
            "fields": fields,
            "tokens": _aggregates.tokens(view, epoch, row),
            "heatmaps": _aggregates.heatmaps(view, epoch, example_id),
            "trajectory": _aggregates.trajectory(view, example_id),
            "neighbors": _aggregates.neighbors(view, epoch, row, NEIGHBORS),
        }

    def image(self, params: Mapping[str, Any]) -> tuple[bytes, str]:
        """``GET /image``: the bytes and MIME type of a file the epoch's meta.json lists."""
        view, epoch = self._view_epoch(params)
        name = params.get("name")
        suffix = Path(str(name)).suffix.lower()
        if not isinstance(name, str) or not _PLAIN_NAME.match(name) or suffix not in _IMAGE_TYPES:
            raise QueryError(
                f"name must be a plain image file name (no folder, no ..) that the epoch's "
                f"meta.json lists, got {name!r}: GET ./example lists the heatmaps.",
            )
        try:
            path = view.run.file_path(name, epoch)  # listed, regular, inside, no link
            return path.read_bytes(), _IMAGE_TYPES[suffix]
        except KeyError:
            raise QueryError(
                f"Epoch {epoch} of run {view.name!r} lists no file {name!r}: only files its "
                "meta.json lists are served.",
                404,
            ) from None
        except (RunFormatError, OSError) as error:
            raise QueryError(f"Refused {name!r}: {error}", 404) from None

    # -- aggregates --------------------------------------------------------------------

    def histogram(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /histogram``: counts of one numeric column over the filtered rows."""
        view, epoch = self._view_epoch(params)
        spec = parse_filter(params.get("filter"))
        bins = _int_param(params, "bins", 30)
        if not 1 <= bins <= 200:
            raise QueryError(f"bins must be between 1 and 200, got {bins}.")
        column = params.get("column") or "loss"
        return _aggregates.histogram(view, epoch, column, bins, self.mask(view, epoch, spec))

    def metrics(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /metrics``: per-class precision, recall, F1 and the confusion matrix."""
        view, epoch = self._view_epoch(params)
        spec = parse_filter(params.get("filter"))
        key = (view.name, epoch, "metrics", canonical(spec))
        return self.cache.get(
            key, lambda: _aggregates.metrics(view, epoch, self.mask(view, epoch, spec))
        )

    def map(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /map``: the data map or the embedding projection, sampled, with density."""
        view, epoch = self._view_epoch(params)
        spec = parse_filter(params.get("filter"))
        kind = params.get("kind") or "datamap"
        if kind not in ("datamap", "embedding"):
            raise QueryError(f"kind must be datamap or embedding, got {kind!r}.")
        return _aggregates.scatter(view, epoch, kind, self.mask(view, epoch, spec))

    def why(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /why``: the stored feature comparison and slices where errors concentrate."""
        view, epoch = self._view_epoch(params)
        return self.cache.get((view.name, epoch, "why"), lambda: _aggregates.why(view, epoch))


def _values(view: RunView, epoch: int, name: str, rows: np.ndarray) -> np.ndarray:
    """One numeric column at some rows; a dynamics column computed for those rows only."""
    if name in DYNAMICS_COLUMNS:
        return view.dynamics_rows(epoch, rows)[DYNAMICS_COLUMNS.index(name)]
    return np.asarray(view.column(name, epoch))[rows]


def _page(params: Mapping[str, Any]) -> tuple[int, int]:
    offset = _int_param(params, "offset", 0)
    limit = _int_param(params, "limit", 50)
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}.")
    return offset, limit


def _order(params: Mapping[str, Any], sort: str | None) -> str:
    """``order``; by default the highest first when sorted, stored order otherwise."""
    order = params.get("order") or ("desc" if sort else "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {order!r}.")
    return order


def _int_param(params: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name)
    if value in (None, ""):
        if default is None:
            raise QueryError(f"The request needs {name}=<whole number>.")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a whole number, got {value!r}.") from None


def _json_values(values: np.ndarray) -> list[Any]:
    """Values as JSON-ready Python numbers (NaN and infinities as None)."""
    if values.dtype.kind == "f":
        if values.dtype.itemsize < 8:  # the shortest text that reads back as the float32
            return [float(str(v)) if np.isfinite(v) else None for v in values]
        listed = values.tolist()
        return [v if math.isfinite(v) else None for v in listed]
    return values.tolist()

"""The dashboard's view of one run folder: memory-mapped columns, decoding, text and caches.

Nothing here imports TensorBoard. Every file is read through
:func:`keras_erranalysis.run.load_run`, whose checks keep reads to what ``meta.json`` lists,
inside the run folder, never through a symbolic link. Expensive derived arrays (sort orders,
the id index, lower-cased text for search, dynamics over epochs) are kept in one
:class:`BoundedCache` whose size is bounded in bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_erranalysis._columns import CLASSIFIER_COLUMNS, EXAMPLE_COLUMNS, PADDING_NAMES
from keras_erranalysis._loss_report import _text
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.run import Run

# Derived per-example columns: dynamics over epochs 1..E (dataset cartography, AUM).
DYNAMICS_COLUMNS = ("aum", "mean_true_prob", "variability")
TEXT_COLUMNS = ("input_text", "label_text", "prediction_text", "generated_text")
# A row's text longer than this many UTF-8 bytes is searched apart from the fixed-width block.
_SEARCH_WIDTH = 256
_CHUNK = 65_536
# Memory maps kept open per run (each holds a file descriptor).
_MAX_MAPPED = 256


class QueryError(Exception):
    """A request the dashboard cannot answer; ``status`` is the HTTP status to send.

    Args:
        message: What is wrong and how to fix it.
        status: 400 for a bad request, 404 for something that does not exist.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BoundedCache:
    """A least-recently-used cache bounded by the bytes of the arrays it holds.

    Args:
        max_bytes: Entries are evicted, oldest use first, while the total is above this.
    """

    def __init__(self, max_bytes: int = 192 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The cached value of ``key``, made (outside the lock) when missing."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
        value = make()
        size = _nbytes(value)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self.bytes += size
                while self.bytes > self.max_bytes and len(self._entries) > 1:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self.bytes -= dropped
        return value

    def clear(self) -> None:
        """Forgets every entry."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def peek(self, key: Any) -> Any:
        """The cached value of ``key``, or None (nothing is made)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return None if found is None else found[0]

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray) and not isinstance(value, np.memmap):
        return int(value.nbytes) if value.base is None or value.flags.owndata else 0
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value) + 64
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values()) + 64
    if isinstance(value, (bytes, str)):
        return len(value)
    return 64


class RunView:
    """One run folder as the dashboard reads it: columns, decoding, text and id lookup.

    Args:
        name: The run's path relative to the logdir.
        run: The opened run.
        cache: The shared cache.
    """

    def __init__(self, name: str, run: Run, cache: BoundedCache) -> None:
        self.name = name
        self.run = run
        self.cache = cache
        # Opened memory maps (opening one parses its header: ~1 ms), least recently used last.
        self._mapped: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._mapped_lock = threading.Lock()

    # -- what the run holds ------------------------------------------------------------

    def epoch(self, value: Any) -> int:
        """An epoch number from a request (None: the last), checked."""
        if not self.run.epochs:
            raise QueryError(
                f"Run {self.name!r} holds no complete epoch yet: wait for the first analyzed "
                "epoch to be written.",
                404,
            )
        if value in (None, ""):
            return self.run.epochs[-1]
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise QueryError(f"epoch must be a whole number, got {value!r}.") from None
        if number not in self.run.epochs:
            raise QueryError(
                f"Run {self.name!r} has no epoch {number}; its epochs are {self.run.epochs}.", 404
            )
        return number

    def meta(self, epoch: int) -> dict[str, Any]:
        return self.run.meta(epoch)

    def is_sequence(self, epoch: int) -> bool:
        return self.meta(epoch)["task"] == "sequence"

    def n_examples(self, epoch: int) -> int:
        return int(self.meta(epoch)["n_examples"])

    def task(self, epoch: int) -> str:
        """``classification``, ``token`` (one output per input position) or ``seq2seq``."""
        meta = self.meta(epoch)
        if meta["task"] != "sequence":
            return "classification"
        if "generated" in meta.get("vectors", {}):
            return "seq2seq"
        label_shape = meta["arrays"].get("label", {}).get("shape")
        inputs = list(meta.get("inputs", {}).values())
        same = inputs and inputs[0].get("shape") == label_shape
        return "token" if same else "seq2seq"

    def stored_columns(self, epoch: int) -> list[str]:
        """Per-example ``(N,)`` numeric columns stored in the epoch, in table order."""
        meta = self.meta(epoch)
        sequence = meta["task"] == "sequence"
        names = list(EXAMPLE_COLUMNS if sequence else CLASSIFIER_COLUMNS)
        if not sequence:
            names[4:4] = ["label", "prediction"]
        found = [c for c in names if c in meta["arrays"]]
        for name, entry in meta.get("extra", {}).items():
            if len(entry["shape"]) == 1 and entry["dtype"][1] in "fiub" and name not in found:
                found.append(name)
        return found

    def numeric_columns(self, epoch: int) -> list[str]:
        """Every numeric column a request may filter or sort on."""
        return [*self.stored_columns(epoch), "nonfinite", *DYNAMICS_COLUMNS]

    def text_columns(self, epoch: int) -> list[str]:
        meta = self.meta(epoch)
        decoding = self.run.decoding(epoch)
        names = []
        if meta.get("inputs"):
            first = next(iter(meta["inputs"].values()))
            if (
                first["dtype"][1] in "US"
                or decoding["input_vocab"] is not None
                or (meta["task"] == "sequence" and decoding["vocab"] is not None)
            ):
                names.append("input_text")
        target = decoding["vocab" if meta["task"] == "sequence" else "label_names"]
        if target is not None:
            names += ["label_text", "prediction_text"]
        if "generated" in meta.get("vectors", {}) and "generated_length" in meta.get("extra", {}):
            names.append("generated_text")
        return names

    def columns(self, epoch: int) -> list[str]:
        return [*self.numeric_columns(epoch), *self.text_columns(epoch)]

    # -- numbers -----------------------------------------------------------------------

    def array(self, name: str, epoch: int) -> np.ndarray:
        """A stored array of one epoch, memory-mapped (any group of meta.json)."""
        key = (name, epoch)
        with self._mapped_lock:
            if key in self._mapped:
                self._mapped.move_to_end(key)
                return self._mapped[key]
        try:
            array = self.run.array(name, epoch)
        except KeyError:
            raise QueryError(
                f"Epoch {epoch} of run {self.name!r} has no column {name!r}; columns are "
                f"{self.columns(epoch)}.",
                404,
            ) from None
        with self._mapped_lock:
            self._mapped[key] = array
            while len(self._mapped) > _MAX_MAPPED:
                self._mapped.popitem(last=False)
        return array

    def column(self, name: str, epoch: int) -> np.ndarray:
        """One numeric per-example column (stored, ``nonfinite`` or a dynamics column)."""
        if name in DYNAMICS_COLUMNS:
            return self.dynamics(epoch)[DYNAMICS_COLUMNS.index(name)]
        if name == "nonfinite":
            return self.cache.get(
                (self.name, epoch, "nonfinite"),
                lambda: ~np.isfinite(np.asarray(self.array("loss_sum", epoch))),
            )
        if name not in self.stored_columns(epoch):
            raise QueryError(
                f"No numeric column {name!r} in epoch {epoch} of run {self.name!r}; use one of "
                f"{self.numeric_columns(epoch)}."
            )
        return self.array(name, epoch)

    def ids(self, epoch: int) -> np.ndarray:
        return self.array("example_id", epoch)

    def id_index(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(sorted ids, order)`` for lookups by id; ``order`` None when ids are ascending."""
        last = self.run.epochs[-1]
        if epoch != last and last in self.run.epochs and self.same_ids(epoch, last):
            return self.id_index(last)  # one index for every epoch of the same examples

        def make() -> tuple[np.ndarray, np.ndarray | None]:
            ids = np.asarray(self.ids(epoch))
            if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
                return ids, None
            order = np.argsort(ids, kind="stable").astype(np.int64)
            return ids[order], order

        return self.cache.get((self.name, epoch, "id_index"), make)

    def rows_of(self, epoch: int, wanted: Any) -> np.ndarray:
        """Row of each id in ``wanted`` in this epoch, -1 where absent."""
        wanted = np.asarray(wanted)
        sorted_ids, order = self.id_index(epoch)
        if sorted_ids.size == 0 or wanted.size == 0:
            return np.full(wanted.shape, -1, np.int64)
        at = np.searchsorted(sorted_ids, wanted)
        at_clipped = np.minimum(at, sorted_ids.size - 1)
        found = sorted_ids[at_clipped] == wanted
        rows = at_clipped if order is None else order[at_clipped]
        return np.where(found, rows, -1).astype(np.int64)

    def same_ids(self, epoch: int, other: int) -> bool:
        """Whether two epochs hold the same ids in the same order (cached)."""
        if epoch == other:
            return True
        key = (self.name, min(epoch, other), max(epoch, other), "same_ids")

        def make() -> np.ndarray:
            a, b = self.ids(epoch), self.ids(other)
            if a.shape != b.shape:
                return np.array(False)
            # Files of equal size and CRC32 (in the checked meta.json) and equal at sampled
            # rows hold the same ids: no need to read two whole columns.
            entry_a = self.meta(epoch)["arrays"]["example_id"]
            entry_b = self.meta(other)["arrays"]["example_id"]
            if (entry_a["bytes"], entry_a["crc32"]) == (entry_b["bytes"], entry_b["crc32"]):
                sample = np.random.default_rng(0).integers(0, max(a.shape[0], 1), 1000)
                if a.shape[0] == 0 or np.array_equal(a[np.sort(sample)], b[np.sort(sample)]):
                    return np.array(True)
            return np.array(bool(np.array_equal(a, b)))

        return bool(self.cache.get(key, make))

    def aligned(self, name: str, source: int, target: int) -> np.ndarray:
        """Column ``name`` of epoch ``source`` in the rows of epoch ``target`` (NaN: absent)."""
        values = self.column(name, source)
        if self.same_ids(source, target):
            return values
        rows = self.cache.get(
            (self.name, source, target, "align"), lambda: self.rows_of(source, self.ids(target))
        )
        out = np.asarray(values)[np.maximum(rows, 0)].astype(np.float64)
        out[rows < 0] = np.nan
        return out

    def dynamics_rows(self, epoch: int, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """:meth:`dynamics` of some rows only (a page): reads ``len(rows)`` values per epoch."""
        cached = self.cache.peek((self.name, epoch, "dynamics"))
        if cached is not None:
            return tuple(values[rows] for values in cached)
        wanted = np.asarray(self.ids(epoch))[rows]
        margins, probs = [], []
        for e in [e for e in self.run.epochs if e <= epoch]:
            at = rows if self.same_ids(e, epoch) else self.rows_of(e, wanted)
            found = at >= 0
            margin = np.asarray(self.column("margin", e))[np.maximum(at, 0)].astype(np.float64)
            prob = np.asarray(self.column("true_prob", e))[np.maximum(at, 0)].astype(np.float64)
            margin[~found] = np.nan
            prob[~found] = np.nan
            margins.append(margin)
            probs.append(prob)
        return _dynamics_of(np.array(margins), np.array(probs))

    def dynamics(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(aum, mean_true_prob, variability)`` over epochs up to ``epoch``, float32.

        AUM is the mean margin (Pleiss et al., 2020); mean true-class probability and its
        standard deviation are dataset cartography's confidence and variability.
        """

        def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            n = self.n_examples(epoch)
            margin_sum, prob_sum, prob_sq = (np.zeros(n) for _ in range(3))
            count = np.zeros(n)
            for e in [e for e in self.run.epochs if e <= epoch]:
                margin = np.asarray(self.aligned("margin", e, epoch), np.float64)
                prob = np.asarray(self.aligned("true_prob", e, epoch), np.float64)
                ok = np.isfinite(margin) & np.isfinite(prob)
                margin_sum += np.where(ok, margin, 0)
                prob_sum += np.where(ok, prob, 0)
                prob_sq += np.where(ok, prob * prob, 0)
                count += ok
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = prob_sum / count
                spread = np.sqrt(np.maximum(prob_sq / count - mean * mean, 0))
                aum = margin_sum / count
            return aum.astype(np.float32), mean.astype(np.float32), spread.astype(np.float32)

        return self.cache.get((self.name, epoch, "dynamics"), make)

    def sort_key(self, name: str, epoch: int, descending: bool) -> np.ndarray:
        """Values whose ascending stable order is the column's display order (NaN last)."""
        if name in TEXT_COLUMNS:
            key = self.cache.get(
                (self.name, epoch, "text_key", name), lambda: self.text_sort_key(name, epoch)
            )
        else:
            key = np.asarray(self.column(name, epoch))
        if key.dtype.kind in "biu":
            key = key.astype(np.int64)
        return -key if descending else key  # NaN stays NaN, so it still sorts last

    def order(self, name: str, epoch: int, descending: bool) -> np.ndarray:
        """Rows sorted by a column (ties in stored order, NaN last either way), cached."""

        def make() -> np.ndarray:
            key = self.sort_key(name, epoch, descending)
            return np.argsort(key, kind="stable").astype(np.int32)

        return self.cache.get((self.name, epoch, "order", name, descending), make)

    def has_order(self, name: str, epoch: int, descending: bool) -> bool:
        return self.cache.peek((self.name, epoch, "order", name, descending)) is not None

    def first_rows(
        self, name: str, epoch: int, descending: bool, rows: np.ndarray | None, k: int
    ) -> np.ndarray | None:
        """The first ``k`` of ``rows`` (None: all) in :meth:`order`'s order, without a full sort.

        A partition finds the k-th key; only rows up to it (ties included) are sorted, so
        the answer equals ``order`` restricted to ``rows`` exactly, in O(N). None when the
        ties at the k-th key are many (a column of few values, such as ``correct``): then
        the full sort, made once and cached, is the cheaper way.
        """
        key = self.sort_key(name, epoch, descending)
        values = key if rows is None else key[rows]
        positions = np.arange(values.size) if rows is None else rows
        k = min(k, values.size)
        if k == 0:
            return positions[:0]
        missing = np.isnan(values) if values.dtype.kind == "f" else None
        present = np.flatnonzero(~missing) if missing is not None else None
        finite = values if present is None else values[present]
        if k > finite.size:  # every valued row, then NaN rows in stored order
            ranked = np.argsort(finite, kind="stable")
            ranked = ranked if present is None else present[ranked]
            return positions[np.concatenate([ranked, np.flatnonzero(missing)])[:k]]
        kth = np.partition(finite, k - 1)[k - 1]
        chosen = np.flatnonzero(finite <= kth)
        if chosen.size > 4 * k + 10_000:
            return None
        chosen = chosen[np.argsort(finite[chosen], kind="stable")[:k]]
        chosen = chosen if present is None else present[chosen]
        return positions[chosen]

    # -- text --------------------------------------------------------------------------

    def texts(self, name: str, epoch: int, rows: Sequence[int] | np.ndarray) -> list[str]:
        """One text column decoded for some rows only (what a page shows)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        meta = self.meta(epoch)
        decoding = self.run.decoding(epoch)
        sequence = meta["task"] == "sequence"
        if name == "input_text":
            if not meta.get("inputs"):
                return [""] * len(rows)
            values = np.asarray(self.array(next(iter(meta["inputs"])), epoch)[rows])
            if values.dtype.kind in "US":
                return [_text(v) for v in values.reshape(len(values), -1)[:, 0]]
            vocab = decoding["input_vocab"] or (decoding["vocab"] if sequence else None)
            if vocab is None:
                return [""] * len(rows)
            flat = values.reshape(len(values), -1)
            if vocab.tokens and vocab.tokens[0].strip().lower() in PADDING_NAMES:
                return [vocab.decode(row, row != 0) for row in flat]
            return [vocab.decode(row) for row in flat]
        if name in ("label_text", "prediction_text"):
            column = "label" if name == "label_text" else "prediction"
            vocab = decoding["vocab" if sequence else "label_names"]
            if vocab is None:
                return [""] * len(rows)
            ids = np.asarray(self.array(column, epoch)[rows])
            if not sequence:
                return [vocab.token(i) for i in ids]
            mask = np.asarray(self.array("token_mask", epoch)[rows], dtype=bool)
            return [vocab.decode(row, m) for row, m in zip(ids, mask)]
        if name == "generated_text":
            if "generated" not in meta.get("vectors", {}):
                return [""] * len(rows)
            ids = np.asarray(self.array("generated", epoch)[rows])
            lengths = np.asarray(self.array("generated_length", epoch)[rows])
            vocab = decoding["vocab"]
            return [
                vocab.decode(row[:n]) if vocab is not None else " ".join(map(str, row[:n]))
                for row, n in zip(ids, lengths)
            ]
        raise QueryError(f"No text column {name!r}; text columns are {list(TEXT_COLUMNS)}.")

    def class_names(self, epoch: int) -> Vocabulary | None:
        meta = self.meta(epoch)
        return self.run.decoding(epoch)["vocab" if meta["task"] == "sequence" else "label_names"]

    def text_sort_key(self, name: str, epoch: int) -> np.ndarray:
        """Integer keys ordering the rows by one text column (case-insensitive)."""
        if name in ("label_text", "prediction_text") and not self.is_sequence(epoch):
            names = self.class_names(epoch)
            ids = np.asarray(self.array("label" if name == "label_text" else "prediction", epoch))
            top = max(int(ids.max(initial=0)) + 1, self.meta(epoch)["num_classes"])
            shown = [names.token(i) if names else str(i) for i in range(top)] + ["<-1>"]
            rank = np.argsort(np.argsort([s.lower() for s in shown], kind="stable"))
            return rank[np.where(ids < 0, top, ids)]
        stored = self._stored_text(name, epoch)
        if stored is not None:  # text kept as a numpy string array: lower-case it in C
            lowered = np.char.lower(_as_unicode(np.asarray(stored)))
        else:
            lowered = np.asarray(self._all_texts(name, epoch), dtype=object)
        # Dense ranks: equal texts share a key, so ties keep the stored order both ways.
        return np.unique(lowered, return_inverse=True)[1].reshape(-1).astype(np.int32)

    def _stored_text(self, name: str, epoch: int) -> np.ndarray | None:
        """The input text as stored, ``(N,)``, when it is a numpy string array; else None."""
        meta = self.meta(epoch)
        if name != "input_text" or not meta.get("inputs"):
            return None
        first = next(iter(meta["inputs"]))
        if meta["inputs"][first]["dtype"][1] not in "US":
            return None
        values = self.array(first, epoch)
        return values.reshape(values.shape[0], -1)[:, 0] if values.ndim > 1 else values

    def _all_texts(self, name: str, epoch: int) -> list[str]:
        """Every row's text, lower-cased, once per (run, epoch, column); not cached here."""
        n = self.n_examples(epoch)
        out: list[str] = []
        for start in range(0, n, 65536):
            rows = np.arange(start, min(n, start + 65536))
            out += [t.lower() for t in self.texts(name, epoch, rows)]
        return out

    def search(self, name: str, epoch: int, query: str) -> np.ndarray:
        """Rows whose text column contains ``query``, case-insensitively, as a bool mask."""
        needle = query.lower()
        if name in ("label_text", "prediction_text") and not self.is_sequence(epoch):
            names = self.class_names(epoch)
            if names is None:
                return np.zeros(self.n_examples(epoch), bool)
            ids = np.asarray(self.array("label" if name == "label_text" else "prediction", epoch))
            top = max(int(ids.max(initial=0)) + 1, 1)
            hits = [i for i in range(top) if needle in names.token(i).lower()]
            return np.isin(ids, hits)
        block, long_rows, long_texts = self.cache.get(
            (self.name, epoch, "search", name), lambda: self._search_index(name, epoch)
        )
        encoded = needle.encode("utf-8")
        mask = np.char.find(block, encoded) >= 0 if block.size else np.zeros(0, bool)
        for row, text in zip(long_rows, long_texts):
            if needle in text:
                mask[row] = True
        return mask

    def _search_index(self, name: str, epoch: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Lower-cased UTF-8 text in a fixed-width block; longer rows kept apart."""
        stored = self._stored_text(name, epoch)
        if stored is None:
            lowered = self._all_texts(name, epoch)
            encoded = [t.encode("utf-8") for t in lowered]
            long_rows = np.array([i for i, b in enumerate(encoded) if len(b) > _SEARCH_WIDTH], int)
            long_texts = [lowered[i] for i in long_rows]
            for i in long_rows:
                encoded[i] = b""
            width = max((len(b) for b in encoded), default=1) or 1
            return np.array(encoded, dtype=f"S{width}"), long_rows, long_texts
        # A numpy string array: lower-case and encode in C, a chunk at a time.
        blocks, long_rows, long_texts = [], [], []
        for start in range(0, stored.shape[0], _CHUNK):
            raw = np.asarray(stored[start : start + _CHUNK])
            ascii_block = _ascii_lower(raw)
            if ascii_block is not None:
                blocks.append(ascii_block)
                continue
            lowered = np.char.lower(_as_unicode(raw))
            encoded = np.char.encode(lowered, "utf-8")
            long = np.flatnonzero(np.char.str_len(encoded) > _SEARCH_WIDTH)
            long_rows += (long + start).tolist()
            long_texts += [str(t) for t in lowered[long]]
            if long.size:
                encoded[long] = b""
                encoded = encoded.astype(f"S{max(int(np.char.str_len(encoded).max()), 1)}")
            blocks.append(encoded)
        block = np.concatenate(blocks) if blocks else np.zeros(0, "S1")
        return block, np.array(long_rows, int), long_texts


def _dynamics_of(margins: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(aum, mean_true_prob, variability)`` of ``(E, n)`` margins and probabilities.

    NaN entries are left out; float32, as :meth:`RunView.dynamics` computes them.
    """
    ok = np.isfinite(margins) & np.isfinite(probs)
    count = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, probs, 0).sum(0) / count
        square = np.where(ok, probs * probs, 0).sum(0) / count
        spread = np.sqrt(np.maximum(square - mean * mean, 0))
        aum = np.where(ok, margins, 0).sum(0) / count
    return aum.astype(np.float32), mean.astype(np.float32), spread.astype(np.float32)


def _ascii_lower(values: np.ndarray) -> np.ndarray | None:
    """Lower-cased bytes of a string array that is all ASCII and short, else None.

    Works on the character codes as integers (no Python object per row): the common case
    of a million short ASCII texts takes milliseconds instead of seconds.
    """
    width = values.dtype.itemsize // (4 if values.dtype.kind == "U" else 1)
    if values.size == 0 or width == 0 or width > _SEARCH_WIDTH:
        return None
    codes = np.ascontiguousarray(values).view(np.uint32 if values.dtype.kind == "U" else np.uint8)
    if codes.max() >= 128:
        return None
    lowered = codes.astype(np.uint8)
    upper = (lowered - np.uint8(65)) < np.uint8(26)  # A-Z, with uint8 wrap-around
    lowered += upper.view(np.uint8) << np.uint8(5)  # + 32
    return lowered.view(f"S{width}").reshape(values.shape)


def _as_unicode(values: np.ndarray) -> np.ndarray:
    """A numpy string array as unicode (bytes decoded as UTF-8, bad bytes replaced)."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace")
    return values

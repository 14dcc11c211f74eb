"""Writing results: plain-text and Markdown tables, and files written atomically (temporary file + rename)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import IO


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Collection[int] = ()) -> str:
    """A text table with a rule under the header, columns two spaces apart, no trailing blanks; columns are
    left-aligned except those whose index is in ``right`` (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table (a ``|`` inside a cell becomes ``/``)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return [line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through ``write(fileobj)`` into a temporary file beside ``path``, fsync, then rename over it.

    A crash leaves the old file or none, never half a file; the result follows the umask like any new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def json_text(data: object) -> str:
    """The project's JSON layout: indent 1, anything unknown as its str(), a final newline."""
    return json.dumps(data, indent=1, default=str) + "\n"


def write_json(path: str | Path | None, data: object) -> None:
    """Write ``data`` as JSON to ``path`` atomically (parents created); nothing when ``path`` is None."""
    if path is not None:
        write_text(path, json_text(data))


def error_line(text: str) -> None:
    """``text`` and its newline to stderr in one write, so that lines of several processes sharing one stderr
    (torchrun's ranks) never run into each other (``print`` writes the text and the newline separately)."""
    _one_write(sys.stderr, 2, text)


def output_line(text: str) -> None:
    """``text`` (one line or several) and its newline to stdout in one write, as :func:`error_line` does for stderr:
    under torchrun every rank's stdout is one pipe, and printed lines of two ranks ran into each other there."""
    _one_write(sys.stdout, 1, text)


def _one_write(stream: IO[str], fd: int, text: str) -> None:
    """One write() where the OS takes it whole (a pipe does up to 4096 bytes atomically); the rest, if any, after."""
    stream.flush()  # whatever the stream still buffers goes first, in order
    data = (text.rstrip("\n") + "\n").encode()
    while data:
        data = data[os.write(fd, data):]

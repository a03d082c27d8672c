"""File input and output shared by every reader and writer.

Output is atomic: write to a temporary file in the target folder, then rename over the target, so an
interrupted run never leaves a truncated report. Input helpers turn the usual ways a file can be
unusable (missing, not text, malformed or absurdly nested JSON) into one ``InputError`` line.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from qdiverge.errors import InputError

# JSON integers longer than this are parsed as floats: Python refuses int() of > 4300 digits and numpy
# cannot hold big ints, so an absurd value becomes inf and fails the reader's range check instead
_MAX_INT_DIGITS = 18


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary binary file and move it to ``path`` only if it succeeds.

    An interrupted or failing writer leaves ``path`` untouched (no truncated reports). The result gets
    the permissions a plain ``open(path, "w")`` would give (``mkstemp`` alone makes it 0600).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{target}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def not_found(path: str | Path, what: str) -> InputError:
    """``InputError`` for a missing file, with the closest file name in its folder when there is one."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return InputError(f"{path}: {what} not found (folder {folder} does not exist)")
    if path.is_dir():
        return InputError(f"{path}: is a folder; give the {what} inside it")
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    hint = f"; did you mean {str(folder / close[0])!r}?" if close else ""
    return InputError(f"{path}: {what} not found{hint}")


def _parse_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else float(text)


def read_json(path: str | Path, what: str) -> tuple[Any, bytes]:
    """Parsed JSON and the raw bytes of ``path``; every way it can fail is one ``InputError`` line."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, what)
    try:
        raw = path.read_bytes()
        return json.loads(raw, parse_int=_parse_int), raw
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected {what} JSON)") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InputError(f"{path}: malformed JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply; not a usable {what}") from None

"""Run the real ``qdiverge`` entry point (``qdiverge.cli.main``) in-process and capture its streams."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from click.testing import CliRunner

from qdiverge.cli import main


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def qdiverge(*args: object) -> Outcome:
    """``qdiverge ARGS`` through ``main()`` (its error mapping included); never raises ``SystemExit``."""
    argv = ["qdiverge", *(str(a) for a in args)]
    saved = sys.argv
    with CliRunner().isolation() as (out, err, _):
        sys.argv = argv
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = saved
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())

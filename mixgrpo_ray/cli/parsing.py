"""argparse as the subcommands use it: usage errors are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """``parser``'s arguments, or the exit code when parsing ended the command (``--help``: 0;
    a usage error, already printed: 2)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

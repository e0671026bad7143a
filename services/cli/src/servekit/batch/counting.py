"""CSV row counts from line breaks, without parsing a row.

A job needs its input's row count before it writes a row (the shard names say
how many shards there are), and parsing a CSV file only to count it costs about
as much as reading it. The bytes are scanned a block at a time with numpy
instead: a row is a non-empty line after the header (the parser skips empty
lines), which holds as long as no cell spans lines. A cell can only do so
inside quotes, and a quote state carried over a line break needs an odd number
of ``"`` before that break; so when every line break follows an even number of
quotes, lines are rows. A file with a carriage return, a quoted line break or
an empty first line is left to the parser (``None``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BLOCK_BYTES = 1 << 22
"""Bytes read and scanned at a time."""
_NEWLINE = ord("\n")
_QUOTE = ord('"')


def count_csv_rows(path: Path, block_bytes: int = BLOCK_BYTES) -> int | None:
    """Rows after the header when lines are rows (see the module); else ``None``."""
    breaks_total = 0
    empty = 0
    quotes = 0
    previous_break = True
    last = b""
    with path.open("rb") as handle:
        while block := handle.read(block_bytes):
            if b"\r" in block or (not last and block.startswith(b"\n")):
                return None
            data = np.frombuffer(block, dtype=np.uint8)
            breaks = data == _NEWLINE
            if quotes % 2 or _QUOTE in block:
                seen = np.cumsum(data == _QUOTE) + quotes
                if (seen[breaks] % 2).any():
                    return None
                quotes = int(seen[-1])
            after_break = np.empty_like(breaks)
            after_break[0] = previous_break
            after_break[1:] = breaks[:-1]
            breaks_total += int(breaks.sum())
            empty += int((breaks & after_break).sum())
            previous_break = bool(breaks[-1])
            last = block[-1:]
    if not last:
        return 0
    lines = breaks_total - empty + (0 if last == b"\n" else 1)
    return max(lines - 1, 0)

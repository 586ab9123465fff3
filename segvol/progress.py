"""Progress of long commands: a tqdm bar on a terminal, periodic plain lines in a log file.

tqdm redraws its bar with carriage returns; written to a Snakemake log (stderr redirected to a
file) every redraw stays in the file, so a fine-tuning log became one 100 kB line. tqdm has no
mode that writes whole lines, hence this small wrapper: when the stream is not a terminal it
prints `<desc>: <n>/<total> <unit> (<pct>%) <elapsed> [<postfix>]` at most every
`every_seconds` and at every `every_fraction` of the total, plus a final line on close.

    for case in progress_bar(cases, desc="normalize abdomen_a", unit="case"):
        ...
    with progress_bar(total=steps, initial=start, desc="finetune", unit="step") as bar:
        bar.update(1); bar.set_postfix(loss="0.123")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

EVERY_SECONDS = 30.0
EVERY_FRACTION = 0.1


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    stream: TextIO | None = None,
    every_seconds: float = EVERY_SECONDS,
    every_fraction: float = EVERY_FRACTION,
):
    """A tqdm bar if `stream` (default stderr) is a terminal, else a `LineProgress`.

    Takes the tqdm arguments the project uses; both results iterate over `iterable`, support
    `update`, `set_postfix`, `close` and `with`.
    """
    stream = stream if stream is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(
            iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True
        )
    return LineProgress(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=disable,
        stream=stream,
        every_seconds=every_seconds,
        every_fraction=every_fraction,
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False


class LineProgress:
    """Progress as whole lines: periodic (time and fraction of the total) and one at the end."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        stream: TextIO | None = None,
        every_seconds: float = EVERY_SECONDS,
        every_fraction: float = EVERY_FRACTION,
    ):
        self.iterable = iterable
        self.total = total
        self.n = int(initial)
        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = float(every_seconds)
        self.every_fraction = float(every_fraction)
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_n = self.n
        self._closed = False

    def __iter__(self):
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last_time >= self.every_seconds or self._crossed_fraction():
            self._write(now)

    def _crossed_fraction(self) -> bool:
        if not self.total or self.every_fraction <= 0:
            return False
        step = max(self.total * self.every_fraction, 1.0)
        return int(self.n / step) > int(self._last_n / step)

    def _write(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        if self.disable:
            return
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = now - self._start
        postfix = f" [{self.postfix}]" if self.postfix else ""
        line = f"{self.desc}: {done} {self.unit}{percent} {elapsed:.0f}s{postfix}"
        self.stream.write(line[:400] + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._last_n or self.n == 0:
            self._write(time.monotonic())

"""Progress output: whole lines in log files, a tqdm bar only on a terminal."""

from __future__ import annotations

import io

from segvol.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_a_line_per_tenth_and_a_final_one():
    log = io.StringIO()
    items = list(progress_bar(range(50), desc="normalize ds", unit="case", stream=log, every_seconds=1e9))
    assert items == list(range(50))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # 5, 10, ..., 50
    assert lines[0].startswith("normalize ds: 5/50 case (10%)") and lines[-1].startswith(
        "normalize ds: 50/50 case (100%)"
    )


def test_postfix_initial_and_time_trigger():
    log = io.StringIO()
    with progress_bar(total=1000, initial=400, desc="finetune", unit="step", stream=log, every_seconds=0.0) as bar:
        bar.update(1)
        bar.set_postfix(loss="0.123")
        bar.update(1)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("finetune: 401/1000 step (40%)")
    assert lines[1].startswith("finetune: 402/1000 step (40%)") and lines[1].endswith("[loss=0.123]")
    assert len(lines) == 2  # close adds nothing new


def test_disabled_writes_nothing_and_terminal_gets_tqdm():
    log = io.StringIO()
    with progress_bar(total=3, desc="x", stream=log, disable=True) as bar:
        bar.update(3)
    assert log.getvalue() == ""
    terminal = Terminal()
    bar = progress_bar(total=3, desc="x", stream=terminal)
    assert not isinstance(bar, LineProgress)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue()

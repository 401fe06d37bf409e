"""Progress display that suits where it goes: a live bar on a terminal; in a log (CI, a file, a pipe), a plain
line every few seconds and at the end, instead of thousands of carriage-return redraws."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 10.0


class _LogLines(tqdm):
    """tqdm for logs: each redraw is a whole line, at most every LOG_INTERVAL_SECONDS, plus the last one."""

    def __init__(self, *args, **kwargs):
        kwargs.update(mininterval=LOG_INTERVAL_SECONDS, ascii=True, ncols=100, dynamic_ncols=False, leave=True)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        self.fp.write((msg or self.__str__()) + "\n")
        self.fp.flush()
        return True

    def clear(self, *args, **kwargs):  # nothing to erase: lines are never redrawn
        pass


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A progress bar (tqdm's arguments); `disable=True` shows nothing."""
    live = getattr(sys.stderr, "isatty", lambda: False)()
    return (tqdm if live else _LogLines)(iterable, **kwargs)

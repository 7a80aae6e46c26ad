"""Progress bars on stderr for the command line, fed by the library's ``progress(done, total)`` callbacks.

The library reports progress as ``(done, total)`` calls; the CLIs turn those into one
tqdm bar on stderr (stdout carries the JSON result only).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stderr_bar(desc: str, unit: str, total: int | None = None) -> Iterator[Any]:
    """A tqdm bar on stderr, closed when the block ends (also on an error or an interrupt)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) as bar:
        yield bar


def tqdm_progress(bar) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that sets ``bar`` to ``done`` of ``total``.

    It sets the position rather than adding steps, so callers that report the same
    step twice, or a total that changes (a resumed run), still show the truth.
    """

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


def scaled_progress(bar) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that shows ``done / total`` on ``bar``'s own fixed total.

    For work reported in internal units (LLM decoding steps over batched phases) on a
    bar counted in what a person asked for (users): the bar keeps its total, only rises,
    and ends full.
    """

    def update(done: int, total: int) -> None:
        if bar.total:
            bar.n = max(bar.n, min(bar.total, bar.total * done // max(total, 1)))
            bar.refresh()

    return update

"""Progress for long steps: a step that runs longer than a second says so on stderr.

    with progress.step("compiling 212 kernels with LLVM"):
        ...

Nothing is printed for quick steps; KILN_PROGRESS=0 silences it entirely.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

DELAY = 1.0  # seconds a step runs before it is announced


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Announce `what` on stderr if it is still running after DELAY, then how long it took."""
    if os.environ.get("KILN_PROGRESS", "1") == "0":
        yield
        return
    start = time.perf_counter()
    announced = threading.Event()

    def announce() -> None:
        announced.set()
        print(f"kiln: {what}...", file=sys.stderr, flush=True)

    timer = threading.Timer(DELAY, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if announced.is_set():
            print(f"kiln: {what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr,
                  flush=True)

"""The `needle train` progress bar: batches done, running loss and accuracy, throughput
(samples or tokens per second) and the time left in the epoch. Plain text on one line of
stderr (redrawn with a carriage return at most 10 times a second), so it needs no package.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressBar", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """`update(n, loss, correct)` after each batch of `n` samples (tokens for a language
    model: `unit="tok"`); `close()` clears the line."""

    def __init__(self, total: int, desc: str, unit: str = "samples",
                 file: Optional[TextIO] = None, min_interval: float = 0.1,
                 perplexity: bool = False, start: Optional[float] = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.min_interval, self.perplexity = min_interval, perplexity
        self.done = self.samples = self.correct = 0
        self.loss_sum = 0.0
        # `start`: when the epoch began (time.perf_counter()), if before the first update
        self.t0 = time.perf_counter() if start is None else start
        self._last = 0.0
        self._len = 0

    def update(self, n: int, loss: float, correct: int) -> None:
        self.done += 1
        self.samples += n
        self.loss_sum += loss * n
        self.correct += correct
        now = time.perf_counter()
        if now - self._last >= self.min_interval or self.done == self.total:
            self._last = now
            self._draw(now)

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (time.perf_counter() if now is None else now) - self.t0
        pct = 100.0 * self.done / self.total if self.total else 0.0
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        n = max(self.samples, 1)
        loss = self.loss_sum / n
        metric = (f"ppl {math.exp(min(loss, 700.0)):.2f}" if self.perplexity
                  else f"acc {self.correct / n:.4f}")
        return (f"{self.desc} {self.done}/{self.total} {pct:3.0f}%  loss {loss:.4f} "
                f"{metric}  {rate:,.0f} {self.unit}/s  ETA {format_seconds(eta)}")

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._len - len(text))
        self.file.write("\r" + text + " " * pad)
        self.file.flush()
        self._len = len(text)

    def close(self) -> None:
        if self._len:
            self.file.write("\r" + " " * self._len + "\r")
            self.file.flush()
            self._len = 0

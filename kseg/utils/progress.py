"""A tiny dependency-free progress bar for long per-image loops (CRF, evaluation).

On a terminal the line is redrawn in place with ``\\r`` at most every
``min_interval`` seconds; on anything else (CI logs, files) a plain line is
written each time another tenth of the work is done, or when ``log_interval``
seconds have passed without a line, so logs stay short but never go silent.

Example (a file instead of a terminal, and a clock that ticks a second a call):

    >>> import io, itertools
    >>> out, ticks = io.StringIO(), itertools.count()
    >>> with Progress(total=20, desc="crf", stream=out, clock=lambda: next(ticks)) as bar:
    ...     for _ in range(20):
    ...         bar.update()
    >>> print(out.getvalue().splitlines()[-1])
    crf: 20/20 [00:20<00:00, 1.0 it/s]
"""

import sys
import time


def _format_seconds(seconds):
    """'mm:ss', or 'h:mm:ss' from one hour on."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def _is_tty(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class Progress:
    """Counts finished items and reports ``desc: n/total [elapsed<eta, rate it/s]``.

    Args:
      total: number of items expected, or None when unknown (no ETA shown).
      desc: label printed at the start of every line.
      stream: where to write; a TTY gets in-place redraws.
      min_interval: minimum seconds between redraws on a TTY.
      log_interval: on a non-TTY stream, write a line at least this often
        (seconds) even if no new tenth was reached.
      clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, total, desc="", stream=None, min_interval=0.5,
                 log_interval=60.0, clock=time.monotonic):
        if total is not None and total < 0:
            raise ValueError(f"Progress total must be >= 0 or None, got {total}")
        self.total = total
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.min_interval = min_interval
        self.log_interval = log_interval
        self.n = 0
        self._clock = clock
        self._tty = _is_tty(self.stream)
        self._start = clock()
        self._last_print = self._start
        self._last_tenth = 0
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def format(self, now=None):
        """The status line (without ``\\r`` or newline)."""
        elapsed = (self._clock() if now is None else now) - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total is None:
            return f"{prefix}{self.n} [{_format_seconds(elapsed)}, {rate:.1f} it/s]"
        if rate > 0:
            eta = _format_seconds(max(self.total - self.n, 0) / rate)
        else:
            eta = "?"
        return (f"{prefix}{self.n}/{self.total} "
                f"[{_format_seconds(elapsed)}<{eta}, {rate:.1f} it/s]")

    def update(self, n=1):
        """Record ``n`` more finished items and print if it is time to."""
        self.n += n
        now = self._clock()
        if self._tty:
            if now - self._last_print >= self.min_interval:
                self._write("\r" + self.format(now))
                self._last_print = now
            return
        tenth = (10 * self.n // self.total) if self.total else 0
        if tenth > self._last_tenth or now - self._last_print >= self.log_interval:
            self._last_tenth = max(tenth, self._last_tenth)
            self._write(self.format(now) + "\n")
            self._last_print = now

    def close(self):
        """Print the final line once (a TTY's in-place line gets its newline)."""
        if self._closed:
            return
        self._closed = True
        line = self.format()
        if self._tty:
            self._write("\r" + line + "\n")
        elif self.total is None or self._last_tenth < 10 or self.n != self.total:
            # Skip only when the 100% line was already written by update().
            self._write(line + "\n")

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()


def iterate(iterable, total=None, desc="", **kwargs):
    """Yields the items of ``iterable`` while showing a :class:`Progress` bar.

    ``total`` defaults to ``len(iterable)`` when the iterable has a length.
    Extra keyword arguments go to :class:`Progress`.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update()

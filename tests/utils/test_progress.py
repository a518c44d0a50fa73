"""Tests for kseg/utils/progress.py: the progress line."""

import io


from kseg.utils.progress import Progress, iterate


# Pool jobs must be top-level functions so that workers can unpickle them.


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_non_tty_writes_a_line_per_tenth():
    stream, clock = io.StringIO(), _FakeClock()
    with Progress(100, "crf", stream=stream, clock=clock) as bar:
        for _ in range(100):
            clock.now += 0.1
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[3] == "crf: 40/100 [00:04<00:06, 10.0 it/s]"
    assert lines[-1] == "crf: 100/100 [00:10<00:00, 10.0 it/s]"
    assert "\r" not in stream.getvalue()


def test_progress_tty_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream, clock = Tty(), _FakeClock()
    with Progress(None, "eval", stream=stream, clock=clock, min_interval=1.0) as bar:
        for _ in range(30):
            clock.now += 0.25
            bar.update()
    text = stream.getvalue()
    assert text.count("\r") == 7 + 1  # one redraw per second, then the final line
    assert text.endswith("\reval: 30 [00:08, 4.0 it/s]\n")


def test_iterate_passes_items_through():
    stream = io.StringIO()
    assert list(iterate([1, 2, 3], desc="x", stream=stream)) == [1, 2, 3]
    assert stream.getvalue().splitlines()[-1].startswith("x: 3/3 [")

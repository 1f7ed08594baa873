import io
import time

from pipelines.beam import progress


def test_counter_files_are_summed_and_printed_while_running(tmp_path):
    a = progress.CounterFile(str(tmp_path / "a.json"), interval=0)
    b = progress.CounterFile(str(tmp_path / "b.json"), interval=3600)
    a.add(sources=2, examples=10)
    b.add(sources=1)  # throttled: not on disk until flushed
    assert progress.read_counters(str(tmp_path / "*.json")) == {"sources": 2, "examples": 10}
    b.flush()
    assert progress.read_counters(str(tmp_path / "*.json")) == {"sources": 3, "examples": 10}
    out = io.StringIO()
    report = progress.counter_report(str(tmp_path / "*.json"),
                                     lambda t: progress.Status(t["sources"], 4, "sources", f"{t['examples']} examples"))
    printer = progress.ProgressPrinter("job", report, interval=0.05, stream=out)
    printer.start()
    time.sleep(0.3)
    printer.stop()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("job: 3/4 sources (") and "s left" in last and "10 examples" in last


def test_a_terminal_gets_a_bar_with_total_rate_and_time_left():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out, done = Terminal(), iter(range(0, 100, 20))
    printer = progress.ProgressPrinter("job", lambda: progress.Status(next(done, 80), 80, "images", "x"),
                                       interval=0.05, stream=out, final=True)
    printer.start()
    time.sleep(0.4)
    printer.stop()
    text = out.getvalue()
    assert "job:" in text and "80/80" in text and "x" in text and "<" in text  # tqdm's elapsed<left

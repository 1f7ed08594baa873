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
    printer = progress.ProgressPrinter(progress.counter_report(str(tmp_path / "*.json"), lambda t, s: f"done {t['sources']}"),
                                       interval=0.05, stream=out)
    printer.start()
    time.sleep(0.3)
    printer.stop()
    assert "done 3" in out.getvalue().splitlines()

import io
import json
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


def _pty_output(columns: int, rows: int, env_term: str | None, monkeypatch) -> str:
    """What a ProgressPrinter draws on a real pseudo-terminal of the given size (0 x 0: unsized)."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    if env_term is not None:
        monkeypatch.setenv("TERM", env_term)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with open(slave, "w", closefd=True) as stream:
        assert stream.isatty()
        done = iter(range(0, 100, 20))
        printer = progress.ProgressPrinter("job", lambda: progress.Status(next(done, 80), 80, "images", "x"),
                                           interval=0.05, stream=stream, final=True)
        printer.start()
        time.sleep(0.4)
        printer.stop()
        stream.flush()
        time.sleep(0.2)
    os.close(master)
    reader.join(timeout=5)
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_pseudo_terminal_without_a_size_still_gets_a_bar(monkeypatch):
    text = _pty_output(0, 0, "xterm", monkeypatch)     # `script`, `docker run -t`, CI runners: 0 x 0
    assert "80/80" in text and "\r" in text and "%|" in text
    assert max(len(line) for line in text.replace("\r", "\n").splitlines()) <= progress.UNSIZED_TERMINAL[0]


def test_a_sized_pseudo_terminal_gets_a_bar_of_its_width(monkeypatch):
    text = _pty_output(60, 20, "xterm", monkeypatch)
    lines = [line for line in text.replace("\r", "\n").splitlines() if "%|" in line]
    assert lines and "80/80" in lines[-1] and max(len(line) for line in lines) <= 60


def test_a_dumb_terminal_gets_lines(monkeypatch):
    text = _pty_output(100, 30, "dumb", monkeypatch)
    assert "%|" not in text and "job: 80/80 images (" in text


def test_predict_reports_strips_and_blocks_before_images_finish(tmp_path):
    from pipelines.predict import finish, outputs
    from pipelines.predict.transforms import ImageInput
    from schemas import layout as names

    layout = outputs.OutputLayout(str(tmp_path), outputs.OutputSettings("segmentation", ("bg", "fg"), ("m",)))
    pending = [ImageInput("a", "/in/a.png"), ImageInput("big/b", "/in/big/b.png"), ImageInput("c", "/in/c.tif")]
    report = finish.ImagesDone(layout, pending)
    first = report()
    assert (first.done, first.total) == (0, 3) and "workers starting" in first.details

    def touch(relative, text="{}"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    fingerprint = layout.settings.fingerprint()
    touch(layout.part("big/b", 0, 4))
    touch(layout.part("big/b", 2, 4))
    touch(names.block_marker_path(fingerprint, "c", 0))
    touch(names.block_marker_path(fingerprint, "c", 7))
    touch(names.block_marker_path(fingerprint, "c", 7, "owned"))     # a decoder's stage: not another block
    touch(names.block_marker_path("other-settings", "c", 1))           # another run's: not counted
    moving = report()
    assert moving.done == 0 and "workers starting" not in moving.details
    assert "2/4 strips of 1 image in progress" in moving.details and "2 blocks of large images done" in moving.details
    touch(layout.row("a"), json.dumps({"tiles": 6}))
    done = report()
    assert done.done == 1 and "6 tiles" in done.details and "workers starting" not in done.details


def test_training_epoch_headers_show_the_plan_under_a_time_budget():
    from trainer.observe import epoch_header

    assert epoch_header(2, 10) == "Epoch 3/10"
    assert epoch_header(0, 10, budget=True).startswith("Epoch 1/10 at most (time budget")
    assert epoch_header(2, 20, planned=12, budget=True) == "Epoch 3/~12 (time budget, at most 20)"


def test_the_export_says_what_decides_masks_and_at_what_the_scores_are():
    from schemas.decoder import DecoderParams
    from schemas.model_card import ModelCard
    from trainer.card_summary import calibration_summary

    base = dict(task="segmentation", model_name="unet", core=8, margin=4, input_size=16, output_size=16, channels=1)
    binary = ModelCard(**base, class_names=("background", "foreground"), threshold=0.42,
                       threshold_rule="max F1 on val", metrics={"dice": 0.9, "iou": 0.8, "loss": 0.1},
                       calibration={"pixel_threshold": 0.5, "pixel_rule": "max F1 on val", "rule": "object-f1"})
    text = "\n".join(calibration_summary(binary))
    assert "P(foreground) >= 0.42 (max F1 on val)" in text and "the pixel rule (max F1 on val) gave 0.5" in text
    assert "dice/iou are of the foreground at this threshold" in text
    boundary = ModelCard(**base, class_names=("background", "boundary", "interior"), metrics={"dice": 0.7},
                         decoder={**DecoderParams("seeded", seed=0.6, foreground=0.4, min_size=5).to_dict(),
                                  "rule": "max Rand F-score on val images", "value": 0.83},
                         calibration={"rule": "rand"}, object_class="cell")
    text = "\n".join(calibration_summary(boundary))
    assert "Decoder: seeded, seeds where P(interior) >= 0.6" in text and "objects >= 5 px" in text
    assert "rand_fscore 0.8300 on the validation images" in text and "not of the decoded objects" in text
    assert calibration_summary(ModelCard(**{**base, "task": "classification"}, class_names=("a", "b"))) == []

"""Quiet start-up: TensorFlow's and Beam's start-up noise stays off a person's terminal.

Importing TensorFlow prints absl, oneDNN and CUDA banners straight to file descriptor 2
(``TF_CPP_MIN_LOG_LEVEL`` does not silence all of them), and Beam's local runner logs
warnings about its own worker set-up. Unless ``TESSERA_VERBOSE=1`` (``tessera --verbose``),
the first TensorFlow import of a process runs with fd 2 sent to a temporary file, which is
shown only if the import fails; Beam's loggers show errors only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

VERBOSE_ENV = "TESSERA_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def stderr_to_file():
    """fd 2 goes to a temporary file inside the block; its text is printed if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tensorflow():
    """``import tensorflow`` (devices initialised), quietly unless verbose."""
    if verbose() or "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with stderr_to_file():
        import tensorflow as tf
        tf.config.list_physical_devices()
    return tf


def quiet_beam() -> None:
    """Beam's loggers show errors only; so do the warnings Beam logs on the root logger."""
    if not verbose():
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
        logging.getLogger().addFilter(lambda r: r.levelno >= logging.ERROR or "apache_beam" not in r.pathname)

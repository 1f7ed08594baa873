"""Commands exit with their own code: no abort at interpreter exit.

pyarrow's threaded Parquet reads in a process that has imported grpc (through Beam)
made about half of such processes abort at exit ("terminate called without an active
exception", code 134), after the command had finished. Reads use use_threads=False.
"""
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import SUCCESS_FILE


def test_evaluate_exits_with_its_code_every_time(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / SUCCESS_FILE).write_text("{}")
    pq.write_table(pa.table({"image_id": ["a"], "label": ["cat"]}), pred / "predictions.parquet")
    command = [sys.executable, "-m", "tessera.cli", "evaluate", "--predictions", str(pred),
               "--output", str(tmp_path / "r.json"), "--truth", str(tmp_path / "missing.csv")]
    codes = [subprocess.run(command, capture_output=True, text=True).returncode for _ in range(4)]
    assert codes == [2, 2, 2, 2]

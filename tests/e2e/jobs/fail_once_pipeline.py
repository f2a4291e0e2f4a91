"""The pipeline with one injected UDF failure: fault F1 of tests/e2e/test_faults.py.

    flink run -py tests/e2e/jobs/fail_once_pipeline.py ... --config sluice.yaml \
        --fault-dir /tmp/f1

Exactly ``jobs/pipeline.py``, except that its ``Ingest`` UDF raises once: at the first
record it sees after the test created ``<fault-dir>/armed`` (the test does so only once
the job has a completed checkpoint). "Once" holds across restarts, subtasks and Python
worker processes: the failing call creates ``<fault-dir>/fired`` with O_EXCL first, and
no call raises once that file exists. The message is written into ``fired`` too, so the
test can find it in the job's exception history.

The subclass lives in this script, the ``__main__`` of the client, so cloudpickle ships
it by value with the UDF: the Python workers never import this file. Production code is
untouched; normal runs never see the subclass.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from jobs import pipeline  # noqa: E402
from sluice.udfs import Ingest  # noqa: E402

MESSAGE = "sluice-fault-F1: injected Ingest failure after a completed checkpoint"


class FailOnceIngest(Ingest):
    def __init__(self, *, fault_dir: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.fault_dir = fault_dir

    def open(self, function_context) -> None:  # type: ignore[no-untyped-def]
        super().open(function_context)
        self.done = False

    def eval(self, value, key, topic, partition, offset, kafka_ts, seq=None):  # type: ignore[no-untyped-def]
        if not self.done:
            self._maybe_fail()
        return super().eval(value, key, topic, partition, offset, kafka_ts, seq)

    def _maybe_fail(self) -> None:
        folder = Path(self.fault_dir)
        if (folder / "fired").exists():
            self.done = True
            return
        if not (folder / "armed").exists():
            return
        try:
            fd = os.open(folder / "fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another subtask raised first
            self.done = True
            return
        with os.fdopen(fd, "w") as f:
            f.write(f"{MESSAGE} (pid {os.getpid()}, {time.time():.3f})\n")
        self.done = True
        raise RuntimeError(MESSAGE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fault-dir", required=True)
    args, rest = parser.parse_known_args(argv)
    pipeline.Ingest = functools.partial(FailOnceIngest, fault_dir=args.fault_dir)  # type: ignore[misc]
    pipeline.main(rest)


if __name__ == "__main__":
    main()

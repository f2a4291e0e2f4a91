"""`sluice bench` variant (b): the pipeline's job graph with pure-Python UDFs.

    python jobs/bench_python.py --config CONFIG --bounded --startup-mode earliest

Exactly jobs/pipeline.py (same SQL, same operators, same Python crossings), with
sluice/bench_udfs.py's PyIngest and PyScoreWindow: fastavro decode and encode instead of
the Rust module. Kept as the honest baseline the Rust UDFs are measured against.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.pipeline import main  # noqa: E402
from sluice.bench_udfs import PyIngest, PyScoreWindow  # noqa: E402

if __name__ == "__main__":
    main(ingest_cls=PyIngest, score_cls=PyScoreWindow)

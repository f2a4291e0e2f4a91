"""Version 2 of the pipeline, for the upgrade test (issue 6, F4).

    flink run -s <savepoint> -py tests/e2e/jobs/upgraded_pipeline.py ... \
        -- --config sluice.yaml --counts-topic <topic>

The same job (run with EnrichedReading v3, which adds `seq`, where version 1 wrote v2:
the new field comes from the config) plus one new stateful operator, appended after all
of the pipeline's own statements: per input format and 10 s of event time, the number
of canonical events, as JSON on ``--counts-topic``, exactly once. Its state is new, so
the savepoint has none for it; every other operator finds its state by uid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from pyflink.table import StatementSet, StreamTableEnvironment  # noqa: E402

from jobs import pipeline  # noqa: E402
from sluice.config import SluiceConfig  # noqa: E402

COUNT_WINDOW_S = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--counts-topic", required=True)
    args, rest = parser.parse_known_args(argv)

    def source_counts(t_env: StreamTableEnvironment, stmts: StatementSet,
                      cfg: SluiceConfig) -> None:
        t_env.execute_sql(pipeline._sink_ddl(cfg, "source_counts_sink", args.counts_topic))
        stmts.add_insert_sql(f"""
            INSERT INTO source_counts_sink
            SELECT src, ENCODE(JSON_OBJECT(
                       'source' VALUE src,
                       'window_start' VALUE UNIX_TIMESTAMP(CAST(window_start AS STRING)) * 1000,
                       'count' VALUE cnt), 'UTF-8')
            FROM (
                SELECT r.source AS src, window_start, COUNT(*) AS cnt
                FROM TABLE(TUMBLE(TABLE counted, DESCRIPTOR(rowtime),
                                  INTERVAL '{COUNT_WINDOW_S}' SECOND))
                WHERE seen = 1
                GROUP BY r.source, window_start, window_end)""")

    pipeline.main(rest, extend=source_counts)


if __name__ == "__main__":
    main()

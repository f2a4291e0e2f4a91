"""F4 (issue 6): stop-with-savepoint, upgrade the job, resume from the savepoint.

Version 1 is the pipeline writing EnrichedReading v2. Mid-stream it is stopped with a
savepoint (no drain: open windows stay open, in the savepoint). Version 2
(tests/e2e/jobs/upgraded_pipeline.py) writes EnrichedReading v3, whose new field `seq`
is the producer's per-device sequence number, and has one new stateful operator
(per-format event counts on a topic of its own). It is submitted with `flink run -s`
and *without* --allowNonRestoredState: Flink refuses the restore if any state of the
savepoint has no operator with its uid in the new job, so a resumed job is the proof
that every uid stayed stable.

The switch point must be a clean cut: per input partition, version 1 processed every
record before the savepoint's position and version 2 every one after it.

Checked against the independent oracle: 0 missing, 0 duplicated, 0 wrong, no hanging
transaction; every canonical event version 2 wrote carries the right `seq`; windows
open across the upgrade count records of both versions; the new operator counted
exactly the records version 2 processed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.kafka_util import ensure_topics, read_committed
from tests.conftest import RUN_DIR
from tests.faults import FaultScenario, assert_exactly_once, report, scenario_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

UPGRADED_JOB = Path(__file__).parent / "jobs" / "upgraded_pipeline.py"


def test_f4_stop_with_savepoint_upgrade_and_resume(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    v2 = scenario_config(stack, "fault-f4", tmp_path, interval_ms=1000)
    v1 = v2.with_overrides(schemas={"enriched": "telemetry.enriched-value/v2.avsc"})
    assert v2.schemas.enriched.endswith("/v3.avsc")
    counts_topic = f"{v2.topics.enriched}.source-counts"
    ensure_topics(v2, [counts_topic])
    with FaultScenario(v1, flink_cluster, tmp_path, RUN_DIR) as s:
        rest = s.rest
        first = s.start()
        old_vertices = {v["id"]: v["name"] for v in rest.job(first)["vertices"]}
        t_stop = time.monotonic()
        savepoint = rest.stop_with_drain(first, tmp_path / "savepoints", drain=False)
        s.mark("stopped with a savepoint")
        assert savepoint.startswith("file:"), savepoint
        assert (Path(savepoint.removeprefix("file:")) / "_metadata").is_file(), savepoint
        second = s.submit(v2, job=UPGRADED_JOB, restore_path=savepoint,
                          extra_args=["--counts-topic", counts_topic])
        rest.wait_fully_running(second, 180, "after the upgrade ")
        recovery = round(time.monotonic() - t_stop, 1)
        s.mark("version 2 running")
        restored = rest.restored_checkpoint(second)
        new_vertices = {v["id"]: v["name"] for v in rest.job(second)["vertices"]}
        gen = s.finish(second)

    # Resumed from that savepoint (a refused restore would have failed the submission).
    assert restored is not None and restored.get("is_savepoint") is True, restored
    assert restored.get("external_path") == savepoint, (restored, savepoint)
    # Every vertex of version 1 is in version 2 under the same id (ids hash the uids).
    assert set(old_vertices) <= set(new_vertices), (
        {i: n[:60] for i, n in old_vertices.items() if i not in new_vertices})
    assert len(new_vertices) > len(old_vertices)

    out = assert_exactly_once(v2, gen, seq_required=False)
    enriched = out[v2.topics.enriched]
    before = [e for e in enriched if "seq" not in e]
    after = [e for e in enriched if "seq" in e]
    assert before and after, (len(before), len(after))
    # A clean cut: per input partition, every record before the savepoint's position
    # was processed by version 1, every record after it by version 2.
    last_v1: dict[tuple[str, int], int] = {}
    first_v2: dict[tuple[str, int], int] = {}
    for e in enriched:
        tp, offset = (e["source_topic"], e["source_partition"]), e["source_offset"]
        if "seq" in e:
            first_v2[tp] = min(first_v2.get(tp, offset), offset)
        else:
            last_v1[tp] = max(last_v1.get(tp, offset), offset)
    crossed = {tp: (last_v1[tp], first_v2[tp]) for tp in set(last_v1) & set(first_v2)
               if last_v1[tp] > first_v2[tp]}
    assert not crossed, f"version 1 and 2 interleave (last v1, first v2 offset): {crossed}"
    assert len(set(last_v1) & set(first_v2)) >= 3, (last_v1, first_v2)

    # The new operator counted, per format, exactly the events version 2 processed.
    counts = [json.loads(r.value) for r in
              read_committed(v2, [counts_topic], idle_timeout=3)[counts_topic]]
    per_source: Counter[str] = Counter()
    for c in counts:
        per_source[c["source"]] += c["count"]
    want = Counter({"telemetry": 0, "sensor-frames": 0, "maintenance-events": 0})
    by_format = {"TELEMETRY": "telemetry", "SENSOR_FRAME": "sensor-frames",
                 "MAINTENANCE": "maintenance-events"}
    for e in after:
        want[by_format[e["source"]]] += 1
    assert per_source == +want, (per_source, want)

    report("F4 stop-with-savepoint, upgraded (EnrichedReading v2 -> v3 with `seq`, a new "
           "stateful operator), resumed", gen, restarts=rest.num_restarts(second),
           restored=restored, recovery_seconds=recovery, events_by_v1=len(before),
           events_by_v2=len(after), new_operator_windows=len(counts),
           vertices=f"{len(old_vertices)} -> {len(new_vertices)}", timings=s.timings)

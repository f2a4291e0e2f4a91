"""Dead letters replayed after a fix, through the real job: the limit that sent them to
the DLQ is raised, `replay_dead_letters` re-injects them (once), a catch-up run of the
pipeline reads the replay topics, and the union of both runs is exactly the oracle's
output: nothing lost, nothing twice, and a second replay adds nothing."""

from __future__ import annotations

from collections import Counter

import pytest

from sluice.config import SluiceConfig
from sluice.dlq_replay import Selection, replay_dead_letters
from sluice.generator import FRAMES, MAINTENANCE, TELEMETRY, topic_of
from sluice.kafka_util import ensure_topics
from tests import oracle
from tests.conftest import PYTHON, run_job, unique_config, write_config
from tests.pipeline_checks import decoded_outputs, produce_input

pytestmark = pytest.mark.integration


def test_replay_after_raising_a_too_low_size_limit_recovers_every_record(
    stack: SluiceConfig, tmp_path
) -> None:
    # The mistake: a record size limit so low that most valid input is dead-lettered.
    strict = unique_config(
        stack, "replay-fix",
        job={"bounded": True, "startup_mode": "earliest"},
        generator={"records": 400, "corrupt_non_avro": 1, "corrupt_unknown_schema": 1,
                   "corrupt_truncated": 1},
        ingest={"max_record_bytes": 60},
        quality={"audit": False},
    )
    gen = produce_input(strict)
    run_job([PYTHON, "jobs/pipeline.py", "--config", str(write_config(strict, tmp_path))])
    first = decoded_outputs(strict)
    oversized = [d for d in first[strict.topics.dlq] if d["reason"] == "oversized"]
    assert len(first[strict.topics.enriched]) > 0, "some small records passed"
    assert len(oversized) > len(gen.frames) + len(gen.work_orders), "most were refused"

    # The fix: the default limit. Each input's oversized letters are replayed into a
    # repair topic of the same format, which a catch-up run of the job reads.
    fixed = strict.with_overrides(
        ingest={"max_record_bytes": 65_536},
        topics={"telemetry": f"{strict.topics.telemetry}.replay",
                "sensor_frames": f"{strict.topics.sensor_frames}.replay",
                "maintenance": f"{strict.topics.maintenance}.replay"},
        job={"consumer_group": f"{strict.job.consumer_group}-replay",
             "transactional_id_prefix": f"{strict.job.transactional_id_prefix}-replay"},
    )
    ensure_topics(fixed)
    replayed = 0
    for src in (TELEMETRY, FRAMES, MAINTENANCE):
        report = replay_dead_letters(
            strict, Selection(reasons=frozenset({"oversized"}), source_topic=topic_of(strict, src)),
            to_topic=topic_of(fixed, src))
        replayed += len(report.replayed)
    assert replayed == len(oversized)
    run_job([PYTHON, "jobs/pipeline.py", "--config", str(write_config(fixed, tmp_path))])

    # Replaying again adds nothing: the ledger knows every letter.
    for src in (TELEMETRY, FRAMES, MAINTENANCE):
        again = replay_dead_letters(
            strict, Selection(reasons=frozenset({"oversized"}), source_topic=topic_of(strict, src)),
            to_topic=topic_of(fixed, src))
        assert again.replayed == [] and set(again.skipped_by_reason()) <= {"already-replayed"}

    # Both runs together: exactly the oracle's canonical events, each once.
    second = decoded_outputs(fixed)  # same output topics as the first run
    enriched = second[strict.topics.enriched]
    ids = [e["event_id"] for e in enriched]
    expected = oracle.expected_enriched(gen, oracle.devices(strict.path(strict.reference.devices_csv)))
    assert len(ids) == len(set(ids)), "a replayed record came out twice"
    assert set(ids) == set(expected)
    # Every corrupt record is still accounted for by a dead letter with its real reason
    # (the two oversized corrupt kinds fail again as oversized, now from the replay topic).
    from sluice.generator import EXPECTED_REASON

    final = [d for d in second[strict.topics.dlq]
             if not (d["reason"] == "oversized" and d["source_topic"] in strict.topics.inputs())]
    assert Counter((d["original_value"], d["reason"]) for d in final) == Counter(
        (c.value, EXPECTED_REASON[c.kind]) for c in gen.corrupt)

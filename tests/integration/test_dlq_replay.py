"""`sluice dlq replay` on the real stack: DeadLetter v2 records produced the way the
job writes them, replayed into their source topic exactly once, with a ledger in the
same Kafka transaction, a negative control and an aborted replay."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from typer.testing import CliRunner

from sluice.config import SluiceConfig
from sluice.dlq_replay import (
    HEADER_REASON,
    HEADER_REPLAY_OF,
    SKIP_AGAIN,
    SKIP_ALREADY,
    SKIP_LIMIT,
    SKIP_TOMBSTONE,
    SKIP_TS_RETENTION,
    LedgerEntry,
    ReplayFenced,
    Selection,
    ledger_key,
    read_ledger,
    replay_dead_letters,
    transactional_id,
)
from sluice.kafka_util import Record, admin, ensure_topics, read_to_end, topic_config
from sluice.registry import read_schema
from tests.conftest import unique_config, write_config

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
MIN = 60_000
DAY = 86_400_000


def replay_config(stack: SluiceConfig, name: str) -> SluiceConfig:
    """Unique telemetry (the source), dlq and ledger topics, and transactional id."""
    cfg = unique_config(stack, name)
    tag = cfg.topics.dlq.removesuffix(".dlq")
    cfg = cfg.with_overrides(topics={"dlq_replays": f"{tag}.dlq.replays"})
    # The source topic with Kafka's default retention (7 days; the local stack keeps
    # 10 years), so that a 30-day-old dead letter is one retention would delete.
    client = admin(cfg)
    new = NewTopic(cfg.topics.telemetry, cfg.topics.partitions, cfg.topics.replication_factor,
                   config={"retention.ms": str(7 * DAY)})
    client.create_topics([new])[cfg.topics.telemetry].result(30)
    ensure_topics(cfg, [cfg.topics.dlq])
    return cfg


def dead_letter(cfg: SluiceConfig, i: int, reason: str, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "original_value": f"\x00\x00\x00\x7f\xff body #{i}".encode(),
        "original_key": f"dev-{i % 3}".encode(),
        "source_topic": cfg.topics.telemetry,
        "source_partition": i % 2,
        "source_offset": 100 + i,
        "source_timestamp": NOW - 10 * MIN + i,
        "error_class": "UnknownSchemaError" if reason == "unknown-schema" else "DecodeError",
        "reason": reason,
        "detail": f"test dead letter {i}",
        "schema_id": 2_147_000_000 if reason == "unknown-schema" else None,
        "job": cfg.job.name,
        "dead_lettered_at": NOW - 5 * MIN + i * 1000,
        "failed_expectations": [],
    }
    d.update(over)
    return d


def produce_dead_letters(cfg: SluiceConfig, letters: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """DeadLetter v2, Confluent framing, subject <dlq>-value: as the job writes them.
    All to DLQ partition 0 in order, so offsets are 0..n-1. Returns (partition, offset)."""
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        ser = AvroSerializer(
            client, read_schema(cfg.schema_path(cfg.schemas.dlq)), lambda o, c: o,
            {"auto.register.schemas": True, "subject.name.strategy.type": "TOPIC"},
        )
        ctx = SerializationContext(cfg.topics.dlq, MessageField.VALUE)
        values = [ser(d, ctx) for d in letters]
    p = Producer({**cfg.kafka.client_properties(), "enable.idempotence": True})
    got: list[tuple[int, int]] = []
    for v in values:
        p.produce(cfg.topics.dlq, value=v, partition=0,
                  on_delivery=lambda err, m: got.append((m.partition(), m.offset())))
    assert p.flush(30) == 0
    assert len(got) == len(letters)
    return got


def standard_letters(cfg: SluiceConfig) -> list[dict[str, Any]]:
    """0-3 unknown-schema (3 without a key), 4-5 bad-magic, 6 a tombstone,
    7 with a timestamp older than the source topic's retention."""
    ls = [dead_letter(cfg, i, "unknown-schema") for i in range(4)]
    ls[3]["original_key"] = None
    ls += [dead_letter(cfg, i, "bad-magic") for i in (4, 5)]
    ls.append(dead_letter(cfg, 6, "tombstone", original_value=None))
    ls.append(dead_letter(cfg, 7, "unknown-schema", source_timestamp=NOW - 30 * DAY))
    return ls


def headers(r: Record) -> dict[str, bytes]:
    return dict(r.headers)


def check_replayed_once(cfg: SluiceConfig, letters: dict[str, dict[str, Any]],
                        records: list[Record] | None = None) -> list[Record]:
    """The source topic holds exactly one replay of each given dead letter (by ledger
    key), with the original key, value, partition and timestamp, and nothing else."""
    recs = read_to_end(cfg, cfg.topics.telemetry) if records is None else records
    seen = Counter(headers(r).get(HEADER_REPLAY_OF, b"").decode() for r in recs)
    dupes = {k: n for k, n in seen.items() if n > 1}
    assert not dupes, f"duplicate replays: {dupes}"
    assert set(seen) == set(letters), f"replayed {sorted(seen)}, expected {sorted(letters)}"
    for r in recs:
        h = headers(r)
        d = letters[h[HEADER_REPLAY_OF].decode()]
        assert r.value == d["original_value"]
        assert r.key == d["original_key"]
        assert r.partition == d["source_partition"]
        assert r.timestamp_ms == d["source_timestamp"]
        assert h[HEADER_REASON].decode() == d["reason"]
    return recs


def keyed(cfg: SluiceConfig, letters: list[dict[str, Any]], pos: list[tuple[int, int]],
          idx: list[int]) -> dict[str, dict[str, Any]]:
    return {ledger_key(cfg.topics.dlq, *pos[i]): letters[i] for i in idx}


def test_replay_writes_each_dead_letter_once_with_its_ledger_entry(stack: SluiceConfig) -> None:
    cfg = replay_config(stack, "replay-once")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)

    report = replay_dead_letters(cfg)
    assert report.selected == len(letters)
    assert report.transactions == 1
    assert report.skipped_by_reason() == {SKIP_TOMBSTONE: 1, SKIP_TS_RETENTION: 1}
    want = keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5])
    recs = check_replayed_once(cfg, want)

    # The ledger names exactly where each record landed, and is compacted.
    ledger = read_ledger(cfg)
    assert set(ledger) == set(want)
    by_key = {headers(r)[HEADER_REPLAY_OF].decode(): r for r in recs}
    for k, e in ledger.items():
        assert (e.target_topic, e.target_partition, e.target_offset) == (
            cfg.topics.telemetry, by_key[k].partition, by_key[k].offset)
    assert topic_config(cfg, cfg.topics.dlq_replays)["cleanup.policy"] == "compact"

    # Again: nothing new; the report says why.
    again = replay_dead_letters(cfg)
    assert again.replayed == []
    assert again.skipped_by_reason() == {SKIP_ALREADY: 6, SKIP_TOMBSTONE: 1, SKIP_TS_RETENTION: 1}
    check_replayed_once(cfg, want)

    # A replay that failed again (the job dead-lettered the replayed record once more)
    # is not replayed into a loop unless asked for.
    r0 = by_key[ledger_key(cfg.topics.dlq, *pos[0])]
    failed_again = dead_letter(cfg, 0, "unknown-schema", source_partition=r0.partition,
                               source_offset=r0.offset)
    pos += produce_dead_letters(cfg, [failed_again])
    third = replay_dead_letters(cfg)
    assert third.replayed == [] and third.skipped_by_reason()[SKIP_AGAIN] == 1
    fourth = replay_dead_letters(cfg, again=True)
    assert [r.letter.dlq_offset for r in fourth.replayed] == [pos[-1][1]]


def test_tombstones_and_now_timestamps_on_request(stack: SluiceConfig) -> None:
    cfg = replay_config(stack, "replay-opts")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)
    report = replay_dead_letters(cfg, Selection(include_tombstones=True, partition=0,
                                                from_offset=6, to_offset=7), timestamp="now")
    assert {r.letter.dlq_offset for r in report.replayed} == {pos[6][1], pos[7][1]}
    recs = read_to_end(cfg, cfg.topics.telemetry)
    assert sorted((r.value is None) for r in recs) == [False, True]
    old = next(r for r in recs if r.value is not None)
    assert old.timestamp_ms >= NOW  # the replay time, not 30 days ago
    assert headers(old)["sluice.source-timestamp"] == str(letters[7]["source_timestamp"]).encode()


def test_filtered_replay_replays_only_the_selection(stack: SluiceConfig) -> None:
    cfg = replay_config(stack, "replay-filter")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)

    dry = replay_dead_letters(cfg, Selection(reasons=frozenset({"bad-magic"})), dry_run=True)
    assert dry.dry_run and [r.letter.reason for r in dry.replayed] == ["bad-magic"] * 2
    assert read_to_end(cfg, cfg.topics.telemetry) == []  # a dry run writes nothing

    replay_dead_letters(cfg, Selection(reasons=frozenset({"bad-magic"})))
    check_replayed_once(cfg, keyed(cfg, letters, pos, [4, 5]))

    # DLQ offsets 1..2 only; and by dead-lettering time, letter 3 only.
    replay_dead_letters(cfg, Selection(partition=0, from_offset=pos[1][1], to_offset=pos[2][1]))
    at3 = letters[3]["dead_lettered_at"]
    replay_dead_letters(cfg, Selection(since_ms=at3, until_ms=at3 + 1))
    check_replayed_once(cfg, keyed(cfg, letters, pos, [1, 2, 3, 4, 5]))

    # The limit counts records still to replay: one more run of 1 takes letter 0.
    last = replay_dead_letters(cfg, Selection(limit=1))
    assert [r.letter.dlq_offset for r in last.replayed] == [pos[0][1]]
    assert SKIP_LIMIT not in last.skipped_by_reason()
    check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))

    # Another source topic selects nothing.
    none = replay_dead_letters(cfg, Selection(source_topic="no-such-topic"))
    assert none.selected == 0 and none.replayed == []


def test_negative_control_a_forgotten_ledger_duplicates_and_the_check_sees_it(
    stack: SluiceConfig,
) -> None:
    """Without the ledger (a fresh ledger topic) the same dead letters are replayed
    again: the duplicate check must fail on that."""
    cfg = replay_config(stack, "replay-neg")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)
    replay_dead_letters(cfg, Selection(reasons=frozenset({"bad-magic"})))
    want = keyed(cfg, letters, pos, [4, 5])
    check_replayed_once(cfg, want)

    amnesiac = cfg.with_overrides(topics={"dlq_replays": cfg.topics.dlq_replays + ".fresh"})
    report = replay_dead_letters(amnesiac, Selection(reasons=frozenset({"bad-magic"})))
    assert len(report.replayed) == 2
    with pytest.raises(AssertionError, match="duplicate replays"):
        check_replayed_once(cfg, want)


def _uncommitted(cfg: SluiceConfig, topic: str) -> int:
    """How many records a read_uncommitted consumer sees (aborted ones included)."""
    c = Consumer({**cfg.kafka.client_properties(), "group.id": f"t-{time.time_ns()}",
                  "isolation.level": "read_uncommitted", "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    parts = c.list_topics(topic, timeout=15).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    n, eof = 0, set()
    deadline = time.monotonic() + 30
    while len(eof) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.5):
            if m.error():
                eof.add(m.partition())
            else:
                n += 1
    c.close()
    return n


@pytest.mark.parametrize("batch_size", [100, 2])
def test_a_failure_mid_replay_commits_nothing_of_its_transaction(
    stack: SluiceConfig, batch_size: int
) -> None:
    """The callback raises after 3 records. One transaction (batch 100): neither the
    records nor ledger entries are visible read_committed. Batches of 2: the first
    batch stays committed with its ledger entries, the second is gone. Either way a
    second run then replays every remaining one exactly once."""
    cfg = replay_config(stack, f"replay-abort{batch_size}")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)

    class Boom(RuntimeError):
        pass

    def fail_after_3(done: int, total: int) -> None:
        if done == 3:
            time.sleep(1)  # long past linger.ms: the records reach the broker's log first
            raise Boom("injected failure")

    with pytest.raises(Boom):
        replay_dead_letters(cfg, batch_size=batch_size, on_progress=fail_after_3)
    committed = read_to_end(cfg, cfg.topics.telemetry)
    ledger = read_ledger(cfg)
    if batch_size == 100:
        assert committed == [] and ledger == {}
    else:
        check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1]), committed)
        assert set(ledger) == set(keyed(cfg, letters, pos, [0, 1]))
    # The aborted records did reach the log (a read_uncommitted consumer sees them):
    # it is the abort that hides them, not that they were never sent.
    assert _uncommitted(cfg, cfg.topics.telemetry) >= 3

    second = replay_dead_letters(cfg, batch_size=batch_size)
    assert len(second.replayed) == (6 if batch_size == 100 else 4)
    check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))
    assert set(read_ledger(cfg)) == set(keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))


def test_a_second_replay_fences_one_in_flight(stack: SluiceConfig) -> None:
    """A replay 'in flight' (a producer with the replay's transactional.id and an open
    transaction holding a ledger entry) is fenced by a new replay: its entry never
    commits and it cannot commit afterwards."""
    cfg = replay_config(stack, "replay-fence")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)
    ensure_topics(cfg, [cfg.topics.dlq_replays])
    stale = Producer({**cfg.kafka.client_properties(), "transactional.id": transactional_id(cfg)})
    stale.init_transactions(30)
    stale.begin_transaction()
    k0 = ledger_key(cfg.topics.dlq, *pos[0])
    stale.produce(cfg.topics.dlq_replays, key=k0.encode(),
                  value=LedgerEntry(k0, "x", 0, 0, 0, "stale").to_json())
    stale.flush(10)

    report = replay_dead_letters(cfg)
    assert len(report.replayed) == 6  # the stale entry was aborted, not skipped
    with pytest.raises(KafkaException):
        stale.commit_transaction(10)
    check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))
    assert read_ledger(cfg)[k0].who != "stale"


def test_cli_dry_run_then_replay(stack: SluiceConfig, tmp_path) -> None:
    import json

    from sluice.cli import app

    cfg = replay_config(stack, "replay-cli")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)
    path = str(write_config(cfg, tmp_path))
    runner = CliRunner()

    dry = runner.invoke(app, ["dlq", "replay", "-c", path, "--dry-run", "--reason", "bad-magic"])
    assert dry.exit_code == 0, dry.output
    assert "would replay" in dry.output and "nothing written" in dry.output
    assert read_to_end(cfg, cfg.topics.telemetry) == []

    # Without --yes it asks; answering no writes nothing.
    no = runner.invoke(app, ["dlq", "replay", "-c", path, "--reason", "bad-magic"], input="n\n")
    assert no.exit_code == 1 and read_to_end(cfg, cfg.topics.telemetry) == []

    done = runner.invoke(app, ["dlq", "replay", "-c", path, "--reason", "bad-magic", "--reason",
                               "unknown-schema", "--yes", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["replayed"] == 6 and summary["skipped"] == {SKIP_TS_RETENTION: 1}
    check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))

    table = runner.invoke(app, ["dlq", "replay", "-c", path, "--yes"])
    assert table.exit_code == 0, table.output
    assert SKIP_ALREADY in table.output

    inspect = runner.invoke(app, ["dlq", "inspect", "-c", path], env={"COLUMNS": "300"})
    assert inspect.exit_code == 0, inspect.output
    assert "original key" in inspect.output and "|dev-1|" in inspect.output


def test_a_replay_fenced_mid_way_commits_nothing(stack: SluiceConfig) -> None:
    """A second replay starting (init_transactions with the same transactional.id)
    while the first is mid-transaction fences the first: it fails with ReplayFenced
    and none of its records or ledger entries commit."""
    cfg = replay_config(stack, "replay-fenced")
    letters = standard_letters(cfg)
    pos = produce_dead_letters(cfg, letters)
    rival: list[Producer] = []

    def start_rival(done: int, total: int) -> None:
        if done == 2:
            p = Producer({**cfg.kafka.client_properties(), "transactional.id": transactional_id(cfg)})
            p.init_transactions(30)
            rival.append(p)

    with pytest.raises(ReplayFenced):
        replay_dead_letters(cfg, on_progress=start_rival)
    assert rival, "the rival never started"
    assert read_to_end(cfg, cfg.topics.telemetry) == [] and read_ledger(cfg) == {}
    replay_dead_letters(cfg)
    check_replayed_once(cfg, keyed(cfg, letters, pos, [0, 1, 2, 3, 4, 5]))

"""`sluice dlq replay` without Kafka: selection parsing, matching, timestamp checks, CLI errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sluice.cli import app
from sluice.dlq_replay import (
    SKIP_TS_RANGE,
    SKIP_TS_RETENTION,
    DeadLetter,
    LedgerEntry,
    Selection,
    _timestamp_problem,
    _TopicInfo,
    ledger_key,
    parse_when,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("text", "want"), [
    ("90s", NOW - 90_000),
    ("15m", NOW - 900_000),
    ("2h", NOW - 7_200_000),
    ("7d", NOW - 7 * 86_400_000),
    ("1w", NOW - 7 * 86_400_000),
    ("1767225600000", NOW),
    ("2026-01-01", NOW),
    ("2026-01-01T00:00:00Z", NOW),
    ("2026-01-01T02:00:00+02:00", NOW),
    ("2026-01-01T00:00", NOW),  # no offset: UTC
])
def test_parse_when(text: str, want: int) -> None:
    assert parse_when(text, NOW) == want


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5m", "2026-13-01"])
def test_parse_when_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        parse_when(text, NOW)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"from_offset": 3}, "need --partition"),
    ({"partition": 0, "from_offset": 5, "to_offset": 4}, "is after"),
    ({"partition": -1}, ">= 0"),
    ({"since": "1h", "until": "2h"}, "before --until"),
    ({"limit": 0}, "--limit"),
])
def test_selection_rejects_contradictions(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.parse(now_ms=NOW, **kwargs)


def letter(partition: int = 0, offset: int = 0, **fields: object) -> DeadLetter:
    base = {"reason": "unknown-schema", "source_topic": "telemetry", "source_partition": 1,
            "source_offset": 7, "source_timestamp": NOW - 1000, "dead_lettered_at": NOW - 500,
            "original_value": b"x"}
    return DeadLetter("dlq", partition, offset, {**base, **fields})


def test_selection_matches() -> None:
    d = letter(partition=1, offset=10)
    assert Selection().matches(d)
    assert Selection.parse(reasons=["bad-magic", "unknown-schema"]).matches(d)
    assert not Selection.parse(reasons=["bad-magic"]).matches(d)
    assert not Selection(source_topic="other").matches(d)
    assert Selection(partition=1, from_offset=10, to_offset=10).matches(d)
    assert not Selection(partition=0).matches(d)
    assert not Selection(partition=1, from_offset=11).matches(d)
    assert not Selection(partition=1, to_offset=9).matches(d)
    assert Selection(since_ms=NOW - 500, until_ms=NOW - 499).matches(d)  # [since, until)
    assert not Selection(until_ms=NOW - 500).matches(d)
    assert Selection.parse(since="1s", now_ms=NOW).matches(d)
    assert not Selection.parse(until="1s", now_ms=NOW).matches(d)


def test_dead_letter_v1_has_no_key_and_a_ledger_key() -> None:
    d = letter(partition=1, offset=42)  # no original_key: a DeadLetter v1
    assert d.key is None
    assert d.ledger_key == ledger_key("dlq", 1, 42) == "dlq/1/42"
    assert letter(original_key=b"dev-1").key == b"dev-1"


def test_ledger_entry_round_trip() -> None:
    e = LedgerEntry("dlq/0/3", "telemetry", 1, 99, NOW, "me@host")
    assert LedgerEntry.from_record(b"dlq/0/3", e.to_json()) == e


def test_timestamp_checks_follow_the_topic_config() -> None:
    kafka4 = _TopicInfo(partitions=2, ts_before_max_ms=None, ts_after_max_ms=3_600_000,
                        retention_ms=7 * 86_400_000)
    assert _timestamp_problem(NOW - 86_400_000, NOW, kafka4) is None
    assert _timestamp_problem(NOW + 2 * 3_600_000, NOW, kafka4) == SKIP_TS_RANGE
    assert _timestamp_problem(NOW - 30 * 86_400_000, NOW, kafka4) == SKIP_TS_RETENTION
    strict = _TopicInfo(partitions=2, ts_before_max_ms=60_000, ts_after_max_ms=None, retention_ms=None)
    assert _timestamp_problem(NOW - 120_000, NOW, strict) == SKIP_TS_RANGE
    assert _timestamp_problem(NOW - 30 * 86_400_000 * 12, NOW, _TopicInfo(2, None, None, None)) is None


@pytest.mark.parametrize(("args", "message"), [
    (["--from-offset", "3"], "need --partition"),
    (["--since", "yesterday"], "cannot read"),
    (["--timestamp", "later"], "--timestamp must be"),
    (["--json"], "--json needs --yes or --dry-run"),
])
def test_cli_rejects_bad_options_before_touching_kafka(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["dlq", "replay", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in result.output

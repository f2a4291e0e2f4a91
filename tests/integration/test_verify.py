"""`sluice verify` on a real run, and negative controls: the same check must report a
duplicated output, an unaccounted input record and a hanging transaction."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from sluice.config import SluiceConfig
from sluice.verify import verify
from tests.conftest import PYTHON, run_job, unique_config, write_config
from tests.pipeline_checks import produce_input

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(stack: SluiceConfig, tmp_path_factory) -> SluiceConfig:
    cfg = unique_config(stack, "verify", job={"bounded": True, "startup_mode": "earliest"},
                        generator={"records": 300}, quality={"audit": False})
    produce_input(cfg)
    run_job([PYTHON, "jobs/pipeline.py", "--config",
             str(write_config(cfg, tmp_path_factory.mktemp("verify")))])
    return cfg


def test_verify_passes_a_clean_run_and_says_so_in_json(run: SluiceConfig, tmp_path) -> None:
    rep = verify(run, idle_timeout=2)
    assert rep.ok, rep.as_dict()
    assert rep.records_in == rep.enriched + rep.dead_letters > 300
    assert rep.windows > 0 and rep.dlq_by_reason
    # Every input record carried its device's sequence number, and so does its event.
    assert rep.sequenced_inputs == rep.records_in
    assert not (rep.input_sequence_errors or rep.sequence_gaps or rep.wrong_seq)
    out = run_job([PYTHON, "-m", "sluice.cli", "verify", "--json", "--idle-timeout", "2",
                   "--config", str(write_config(run, tmp_path))])
    report = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert report["ok"] is True and report["missing"]["count"] == 0


def _produce(cfg: SluiceConfig, topic: str, value: bytes, *, transactional: bool = False,
             key: bytes | None = None, headers: list | None = None) -> Producer:
    conf = dict(cfg.kafka.client_properties())
    if transactional:
        conf["transactional.id"] = f"{cfg.job.transactional_id_prefix}-verify-hang"
    p = Producer(conf)
    if transactional:
        p.init_transactions(30)
        p.begin_transaction()
    p.produce(topic, value=value, key=key, headers=headers)
    p.flush(30)
    return p


def _with_seq(cfg: SluiceConfig, value: bytes, seq: int) -> bytes:
    """The same canonical event, re-encoded (same writer schema id) with another seq."""
    import io

    import fastavro
    from confluent_kafka.schema_registry import SchemaRegistryClient

    schema_id = int.from_bytes(value[1:5], "big")
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        schema = fastavro.parse_schema(json.loads(client.get_schema(schema_id).schema_str))
    rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
    assert "seq" in rec
    rec["seq"] = seq
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, rec)
    return value[:5] + out.getvalue()


def test_verify_reports_duplicates_missing_records_and_open_transactions(
    run: SluiceConfig, tmp_path
) -> None:
    """Negative controls, applied one after the other to the run's topics (this test
    runs after the clean check above and leaves the run damaged)."""
    from sluice.kafka_util import read_committed

    first = read_committed(run, [run.topics.enriched], idle_timeout=2)[run.topics.enriched][0]
    # 1. The same canonical event written again.
    _produce(run, run.topics.enriched, first.value).flush(10)
    rep = verify(run, idle_timeout=2)
    assert not rep.ok and rep.duplicated and rep.duplicate_event_ids and not rep.balanced
    # 2. An input record nothing accounts for (not read by any job), whose sequence
    #    number leaves a gap in its device's sequence.
    header = run.ingest.sequence_header
    assert header
    _produce(run, run.topics.maintenance, b'{"event_id": "late-arrival"}', key=b"dev-0000",
             headers=[(header, b"1000000")]).flush(10)
    rep = verify(run, idle_timeout=2)
    assert len(rep.missing) == 1 and rep.missing[0][0] == run.topics.maintenance
    assert rep.sequence_gaps == [("dev-0000", 1_000_000)]
    assert [d for d, _ in rep.input_sequence_errors] == ["dev-0000"]
    assert "never produced" in rep.input_sequence_errors[0][1]
    # 2b. A canonical event whose seq is not its input record's.
    wrong = _with_seq(run, first.value, 777_777)
    _produce(run, run.topics.enriched, wrong).flush(10)
    rep = verify(run, idle_timeout=2)
    assert [(got, want) for _, got, want in rep.wrong_seq if got == 777_777], rep.wrong_seq
    # 3. A transaction left open on an output topic.
    hanging = _produce(run, run.topics.dlq, b"\x00", transactional=True)
    try:
        rep = verify(run, idle_timeout=2)
        assert any(k.startswith(run.topics.dlq) for k in rep.hanging_transactions)
        code = run_job([PYTHON, "-c", "import sys; from typer.testing import CliRunner; "
                        "from sluice.cli import app; "
                        f"r = CliRunner().invoke(app, ['verify', '--idle-timeout', '2', '-c', "
                        f"'{write_config(run, tmp_path)}']); print('EXIT', r.exit_code)"])
        assert "EXIT 1" in code
    finally:
        hanging.abort_transaction(30)

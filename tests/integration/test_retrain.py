"""`jobs/retrain.py` on the real stack: RetrainTriggers and FeatureVectors as Avro on Kafka,
the model registry on disk.

* a trigger on shifted data → a new registry version and exactly one ModelUpdate;
* a trigger whose candidate is worse on the holdout → refused: no version, no ModelUpdate,
  the reason in the ledger and the output;
* the same triggers again → nothing new (idempotent by trigger_id);
* a version trained for a trigger whose announcement never committed (a crash) → announced
  on the next run, not trained again;
* `sluice model publish` announces an existing version, naming the last announced one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from sluice.actions import ConfluentAvroEncoder
from sluice.config import SluiceConfig
from sluice.kafka_util import ensure_topics
from sluice.model import Dataset, Registry, TrainParams, fit, package
from sluice.model_updates import load_artifact, read_updates
from sluice.registry import output_schema
from sluice.retrain import WRITE_TIME_MARGIN_MS, Ledger, ledger_path, read_features, retrain
from tests.conftest import PYTHON, run_job, unique_config, write_config

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
START = T0 + 10_000_000  # the drift starts here
NAMES = ("temperature_c.mean", "temperature_c.std", "humidity_pct.mean")
SPEC = "spec-retrain-test"


def vectors(rng: np.random.Generator, n: int, start: int, window: str, shift: float = 0.0) -> list[dict]:
    X = rng.normal(0, 1, (n, 3)) * [1.0, 0.3, 5.0] + [40.0, 1.0, 50.0]
    X[:, 0] += shift
    return [{"device_id": f"dev-{i % 10:03d}", "site_id": None, "window": window,
             "window_kind": "TUMBLE", "window_start": start + i * 6_000,
             "window_end": start + i * 6_000 + 60_000, "event_count": 12,
             "features": dict(zip(NAMES, X[i].tolist(), strict=True)),
             "feature_spec_version": SPEC, "computed_at": start + i * 6_000 + 61_000}
            for i in range(n)]


def active(reg: Registry, name: str, window: str, rng: np.random.Generator) -> None:
    data = vectors(rng, 2000, T0, window)
    X = np.array([[r["features"][n] for n in NAMES] for r in data])
    ds = Dataset(NAMES, X, np.array([r["window_start"] for r in data]), None)
    model, med, meta = fit(ds, TrainParams(n_estimators=50, contamination=0.02))
    files, meta = package(model, med, meta, name=name, window=window, spec_version=SPEC)
    reg.publish(name, files, meta)


def trigger(name: str, end: int) -> dict:
    return {"trigger_id": f"{name}@1@{end}", "model_name": name, "model_version": "1",
            "drifted_features": ["temperature_c.mean"], "window_start": START,
            "window_end": end, "triggered_at": end + 5}


def produce(cfg: SluiceConfig, topic: str, schema: str, records: list[dict],
            written_at: str | None = None) -> None:
    """``written_at``: a field whose value becomes the record's Kafka timestamp (default:
    the producer's clock)."""
    out = output_schema(cfg, schema)
    enc = ConfluentAvroEncoder(out.schema_str, out.schema_id)
    p = Producer({**cfg.kafka.client_properties(), "enable.idempotence": True})
    for r in records:
        ts = {"timestamp": int(r[written_at])} if written_at else {}
        p.produce(topic, key=str(r.get("device_id") or r.get("model_name")).encode(), value=enc(r),
                  **ts)
    assert p.flush(30) == 0


def run_retrain(path: Path) -> list[dict]:
    out = run_job([PYTHON, "jobs/retrain.py", "--config", str(path), "--once"], timeout=300)
    line = next(x for x in out.splitlines() if x.startswith('{"triggers"'))
    return json.loads(line)["decisions"]


@pytest.fixture()
def setup(stack: SluiceConfig, tmp_path: Path) -> tuple[SluiceConfig, Path, Registry]:
    cfg = unique_config(stack, "retrain", models={"dir": str(tmp_path / "models")},
                        retrain={"consumer_group": f"retrain-{tmp_path.name}", "min_rows": 300})
    ensure_topics(cfg, [cfg.topics.features, cfg.topics.retrain_triggers, cfg.topics.model_updates])
    reg = Registry(tmp_path / "models")
    rng = np.random.default_rng(11)
    active(reg, "m", "w", rng)  # drift persists: retraining helps
    active(reg, "r", "rw", rng)  # drift reverted: the candidate would be worse
    feats = (vectors(rng, 400, START - 400 * 6_000, "w")  # before the drift: not trained on
             + vectors(rng, 1500, START, "w", shift=3.0)
             + vectors(rng, 1200, START, "rw", shift=3.0)
             + vectors(rng, 300, START + 1200 * 6_000, "rw"))
    produce(cfg, cfg.topics.features, "features-value/v1.avsc", feats)
    return cfg, write_config(cfg, tmp_path), reg


def test_retrain_publishes_refuses_and_is_idempotent(setup: tuple[SluiceConfig, Path, Registry]) -> None:
    cfg, path, reg = setup
    t_m, t_r = trigger("m", START + 600_000), trigger("r", START + 600_000)
    produce(cfg, cfg.topics.retrain_triggers, "retrain-triggers-value/v1.avsc", [t_m, t_r])

    got = {d["trigger_id"]: d for d in run_retrain(path)}
    assert got[t_m["trigger_id"]]["action"] == "published" and got[t_m["trigger_id"]]["version"] == 2
    assert got[t_r["trigger_id"]]["action"] == "refused"
    assert got[t_r["trigger_id"]]["reason"].startswith("holdout-regression: calibration_error")
    assert [v.version for v in reg.versions("m")] == [1, 2]
    assert [v.version for v in reg.versions("r")] == [1]  # refused: no version
    v2 = reg.get("m", 2)
    assert v2.metadata["retrain"]["trigger_id"] == t_m["trigger_id"]
    assert v2.metadata["retrain"]["rows"] == 1500  # the 400 rows before the drift left out

    updates = read_updates(cfg)
    assert len(updates) == 1
    u = updates[0]
    assert (u["model_name"], u["version"], u["previous_version"]) == ("m", "2", "1")
    assert u["feature_spec_version"] == SPEC and u["artifact_sha256"] == v2.metadata["export_sha256"]
    assert load_artifact(u) == v2.export_text()
    assert u["holdout_metrics"]["guard.ok"] == 1.0 and u["holdout_metrics"]["rows"] == 300
    assert u["holdout_metrics"]["guard.active"] > u["holdout_metrics"]["guard.candidate"]
    ledger = Ledger(ledger_path(cfg)).decisions()
    refused = [d for d in ledger if d["action"] == "refused"]
    assert [d["trigger_id"] for d in refused] == [t_r["trigger_id"]]
    assert refused[0]["guard"]["candidate"] > refused[0]["guard"]["active"] + 0.02

    # The same triggers again: nothing trained, nothing announced.
    produce(cfg, cfg.topics.retrain_triggers, "retrain-triggers-value/v1.avsc", [t_m, t_r])
    again = run_retrain(path)
    assert sorted(d["action"] for d in again) == ["duplicate", "duplicate"]
    assert [v.version for v in reg.versions("m")] == [1, 2] and len(read_updates(cfg)) == 1

    # A crash after publishing, before the transaction committed: the version exists, its
    # ModelUpdate does not. The next run announces it instead of training another.
    t_m3 = trigger("m", START + 1_200_000)
    d, mv = retrain(cfg, t_m3, vectors(np.random.default_rng(5), 1000, START, "w", shift=3.0), reg)
    assert d.action == "published" and mv is not None and mv.version == 3
    produce(cfg, cfg.topics.retrain_triggers, "retrain-triggers-value/v1.avsc", [t_m3])
    [rec] = run_retrain(path)
    assert (rec["action"], rec["version"]) == ("recovered", 3)
    assert [v.version for v in reg.versions("m")] == [1, 2, 3]
    updates = read_updates(cfg)
    assert [(u["version"], u["previous_version"]) for u in updates] == [("2", "1"), ("3", "1")]

    # `sluice model publish` (a manual roll-back to v1): previous = the last announced.
    out = run_job([PYTHON, "-m", "sluice.cli", "model", "publish", "m", "--version", "1",
                   "--config", str(path)], timeout=120)
    rec = json.loads(next(x for x in out.splitlines() if x.startswith('{"model_name"')))
    assert (rec["version"], rec["previous_version"]) == ("1", "3")
    assert [u["version"] for u in read_updates(cfg)] == ["2", "3", "1"]


def test_read_features_starts_at_the_trigger_period(stack: SluiceConfig) -> None:
    """The retrain process reads the features topic from the trigger's period (by record
    timestamp, one margin early), not from the beginning."""
    cfg = unique_config(stack, "retrain-since")
    ensure_topics(cfg, [cfg.topics.features])
    rng = np.random.default_rng(5)
    old = vectors(rng, 50, T0, "w")  # written long before the period
    edge = vectors(rng, 20, START - WRITE_TIME_MARGIN_MS + 60_000, "w")  # within the margin
    new = vectors(rng, 60, START, "w")
    produce(cfg, cfg.topics.features, "features-value/v1.avsc", old + edge + new,
            written_at="computed_at")
    def starts(rows: list[dict]) -> list[int]:
        return sorted(v if isinstance(v, int) else int(v.timestamp() * 1000)
                      for v in (r["window_start"] for r in rows))

    got = read_features(cfg, START)
    assert starts(got) == starts(edge + new), f"{len(got)} read, {len(edge + new)} expected"
    # Controls: from before everything and without a bound, every vector is read.
    assert starts(read_features(cfg, T0)) == starts(old + edge + new)
    assert starts(read_features(cfg)) == starts(old + edge + new)
    # After the last record: nothing, and no wait for records that will not come.
    assert read_features(cfg, START + 10 * 86_400_000) == []


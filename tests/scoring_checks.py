"""Helpers for the scoring tests: synthetic FeatureVectors, producing them exactly as the
pipeline does (Avro through the registry, in a Kafka transaction), and the independent
check of the scoring job's output against the model registry."""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import SluiceConfig
from sluice.feature_job import vector_key
from sluice.model import Registry

WINDOW = "temp_1m"
MINUTE = 60_000


def synthetic_vectors(cfg: SluiceConfig, *, devices: int, windows: int, shift: float = 0.0,
                      start_ms: int = 1_767_225_600_000, seed: int = 0,
                      window: str = WINDOW) -> list[dict[str, Any]]:
    """FeatureVectors of ``window`` whose features are independent normals (mean
    ``shift``), one per device and minute."""
    spec = cfg.feature_spec()
    assert spec is not None
    names = spec.window(window).feature_names()
    rng = random.Random(seed)
    out = []
    for w in range(windows):
        for d in range(devices):
            ws = start_ms + w * MINUTE
            out.append({
                "device_id": f"dev-{d:03d}", "site_id": f"site-{d % 3}", "window": window,
                "window_kind": "TUMBLE", "window_start": ws, "window_end": ws + MINUTE,
                "event_count": 12,
                "features": {n: rng.gauss(shift, 1.0) for n in names},
                "feature_spec_version": spec.spec_version(), "computed_at": ws + MINUTE + 5,
            })
    return out


def produce_vectors(cfg: SluiceConfig, vectors: Iterable[dict[str, Any]]) -> int:
    """Produce FeatureVectors to ``topics.features`` in one committed transaction, keyed
    like the pipeline's (device@window@start)."""
    from confluent_kafka import Producer

    from sluice.auth import fail_fast
    from sluice.native import AvroEncoder
    from sluice.registry import output_schema

    schema = output_schema(cfg, cfg.schemas.features)
    enc = AvroEncoder(schema.schema_str, schema.schema_id)
    p = Producer({**fail_fast(cfg.kafka.client_properties()),
                  "transactional.id": f"test-vectors-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    p.begin_transaction()
    n = 0
    for v in vectors:
        value = enc.encode(tuple(v[f] for f in (
            "device_id", "site_id", "window", "window_kind", "window_start", "window_end",
            "event_count", "features", "feature_spec_version", "computed_at")))
        p.produce(cfg.topics.features, key=vector_key(v["device_id"], v["window"],
                                                      v["window_start"]).encode(), value=value)
        n += 1
    p.commit_transaction(60)
    return n


@dataclass
class ScoringReport:
    vectors: int
    scores: int
    by_version: dict[str, int]
    alerts: int


def check_scores(vectors: list[dict[str, Any]], scores: list[tuple[int, dict[str, Any]]],
                 alerts: list[dict[str, Any]], registry_root: Path, model_name: str,
                 window: str = WINDOW) -> ScoringReport:
    """Every vector of ``window`` scored exactly once; each score equals what the version
    it names computes (the Rust export exactly, scikit-learn's score_samples within 1e-9);
    each output partition switches versions at most once per announcement, in order; the
    verdict agrees with the threshold, which is never stricter than the model's; every
    alert matches one alerting score and vice versa. ``scores``: (partition, record) in
    partition order. Raises AssertionError naming the first violation."""
    reg = Registry(registry_root)
    expected = {f"{v['device_id']}@{v['window']}@{v['window_start']}#{model_name}": v
                for v in vectors if v["window"] == window}
    seen: dict[str, dict[str, Any]] = {}
    for _, s in scores:
        sid = s["score_id"]
        assert sid in expected, f"score {sid} for no input vector of window {window}"
        assert sid not in seen, f"vector {sid} scored twice ({seen[sid]['model_version']}, " \
                                f"{s['model_version']})"
        seen[sid] = s
    missing = sorted(set(expected) - set(seen))
    assert not missing, f"{len(missing)} vectors never scored, e.g. {missing[:3]}"

    names: dict[str, Any] = {}
    for sid, s in seen.items():
        ref = s["model_version"]
        name, _, ver = ref.rpartition("/v")
        assert name == model_name == s["model_name"], f"{sid}: scored by {ref}"
        if ref not in names:
            mv = reg.get(name, int(ver))
            names[ref] = (mv.native(), mv.sklearn(), mv.metadata)
        native, sk, meta = names[ref]
        v = expected[sid]
        x = [float(v["features"].get(n, math.nan)) for n in meta["feature_names"]]
        want = native.score(x)
        assert s["score"] == want, f"{sid}: score {s['score']} but {ref} gives {want}"
        med = np.array(meta["impute"]["values"])
        row = np.array([x])
        row = np.where(np.isnan(row), med, row)
        sk_score = float(sk.score_samples(row)[0])
        assert abs(sk_score - s["score"]) <= 1e-9, f"{sid}: sklearn {sk_score} vs {s['score']}"
        assert s["model_threshold"] == meta["threshold"], f"{sid}: model threshold differs"
        assert s["threshold"] <= s["model_threshold"] + 1e-12, f"{sid}: stricter than the model"
        assert s["is_alert"] == (s["score"] < s["threshold"]), f"{sid}: verdict disagrees"

    # Per output partition, the version sequence only moves forward (a switch, once).
    by_part: dict[int, list[int]] = defaultdict(list)
    for part, s in scores:
        by_part[part].append(int(s["model_version"].rpartition("/v")[2]))
    for part, vs in by_part.items():
        drops = [i for i in range(1, len(vs)) if vs[i] < vs[i - 1]]
        assert not drops, f"partition {part}: version goes back from v{vs[drops[0] - 1]} to " \
                          f"v{vs[drops[0]]} at position {drops[0]}"

    alerting = {f"{model_name}:{s['score_id'].split('#')[0]}": s
                for s in seen.values() if s["is_alert"]}
    got = defaultdict(int)
    for a in alerts:
        got[a["alert_id"]] += 1
        s = alerting.get(a["alert_id"])
        assert s is not None, f"alert {a['alert_id']} without an alerting score"
        assert a["model_version"] == s["model_version"] and a["mean"] == s["score"]
    dup = [k for k, n in got.items() if n > 1]
    assert not dup, f"alerts raised twice: {dup[:3]}"
    assert set(got) == set(alerting), f"{len(set(alerting) - set(got))} alerting scores " \
                                      "have no alert"
    versions: dict[str, int] = defaultdict(int)
    for s in seen.values():
        versions[s["model_version"]] += 1
    return ScoringReport(len(expected), len(seen), dict(versions), len(alerts))


@dataclass
class DriftReport:
    windows: int  # distinct (feature, window) evaluated
    events: int
    drifted: int
    watermark_ms: int


def _ms(v: Any) -> int:
    return v if isinstance(v, int) else int(v.timestamp() * 1000)


def check_drift(features: list[tuple[int, dict[str, Any]]], events: list[dict[str, Any]],
                triggers: list[dict[str, Any]], drift: Any, partitions: int,
                names: list[str]) -> DriftReport:
    """The drift output of one model against an oracle that only counts: which sliding
    windows must have closed and how many vectors each holds, from the vectors as the
    features topic holds them ((partition, record), all scored by one version, none late).

    The monitor's watermark is the oldest of the partitions' newest window starts minus
    one slide (docs/drift.md); every window [s, s + window_ms) with s a multiple of
    slide_ms, end - 1 <= that watermark and at least min_samples vectors must have exactly
    one DriftEvent per feature, whose sample_count is the number of vectors in it. No
    other event; no trigger twice."""
    W, S = drift.window_ms, drift.slide_ms
    newest: dict[int, int] = {}
    starts: list[int] = []
    for p, v in features:
        t = _ms(v["window_start"])
        starts.append(t)
        newest[p] = max(newest.get(p, t), t)
    assert len(newest) == partitions, \
        f"vectors on partitions {sorted(newest)} of {partitions}: no watermark to check against"
    wm = min(newest.values()) - S
    panes = {t - t % S for t in starts}
    candidates = {p - j * S for p in panes for j in range(W // S)}
    want = {}
    for ws in sorted(candidates):
        n = sum(1 for t in starts if ws <= t < ws + W)
        if ws + W - 1 <= wm and n >= drift.min_samples:
            want[ws] = n
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        key = (e["feature"], _ms(e["window_start"]))
        assert key not in seen, f"drift event for {key} written twice"
        seen[key] = e
        assert _ms(e["window_end"]) - key[1] == W, f"{key}: window of {e['window_end']}"
    for name in names:
        got = {ws for f, ws in seen if f == name}
        assert got == set(want), (
            f"{name}: windows missing {sorted(set(want) - got)}, unexpected "
            f"{sorted(got - set(want))} (watermark {wm})")
        for ws, n in want.items():
            assert seen[(name, ws)]["sample_count"] == n, \
                f"{name} window {ws}: sample_count {seen[(name, ws)]['sample_count']}, want {n}"
    assert {f for f, _ in seen} <= set(names), f"events for other features: {set(seen)}"
    ids = [t["trigger_id"] for t in triggers]
    assert len(ids) == len(set(ids)), f"retrain trigger written twice: {sorted(ids)}"
    return DriftReport(len(seen), len(events), sum(bool(e["drifted"]) for e in events), wm)


# --- running the scoring job and reading its output ----------------------------------------
def ref(mv: Any) -> str:
    """How score and alert records name a model version (``name/vN``)."""
    return f"{mv.name}/v{mv.version}"


def wait_for(cond: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(what)


def bridge_until(switched: Any, produce_batch: Any, *, timeout: float = 120.0,
                 pause: float = 1.0, what: str = "no vector was scored by the new version") -> int:
    """After a hot swap was announced: ``produce_batch(k)`` (a small batch) every
    ``pause`` seconds until ``switched()`` (a committed score by the new version) holds.
    Returns how many bridging batches it took; fails after ``timeout`` seconds."""
    import time

    k = 0
    deadline = time.monotonic() + timeout
    while not switched():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        produce_batch(k)
        k += 1
        time.sleep(pause)
    return k


def read_outputs(cfg: SluiceConfig, topics: list[str]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """(partition, record) per topic, read_committed, in partition/offset order, decoded by
    confluent-kafka's own Avro deserializer (not the job's Rust decoder)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from sluice.kafka_util import read_committed

    got = read_committed(cfg, topics, idle_timeout=2.0, max_wait=30)
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        for t in topics:
            recs = sorted(got[t], key=lambda r: (r.partition, r.offset))
            out[t] = [(r.partition, de(r.value, None)) for r in recs if r.value is not None]
    return out


class ScoringJob:
    """jobs/scoring.py on a mini-cluster in a child process (a context manager)."""

    def __init__(self, cfg_path: Path, log_path: Path):
        import socket
        import subprocess

        from sluice.config import REPO_ROOT
        from tests.conftest import PYTHON

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "jobs/scoring.py", "--config", str(cfg_path), "--rest-port", str(self.port)],
            cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the scoring job exited {self.proc.returncode}: "
                                 f"{self.log_path.read_text()[-4000:]}")

    def __enter__(self) -> ScoringJob:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

"""The online store's idempotent upsert (Lua) and reads, against a real redis-server
that this module starts on a unix socket in a temporary folder (no TCP port, nothing
persisted)."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sluice.config import FeatureStoreConfig, SluiceConfig
from sluice.feature_store import FeatureStore, StoreUnavailable, UnknownDevice
from sluice.stack.manager import check_redis, redis_conf
from sluice.stack.models import StackPorts
from tests.feature_store_oracle import diff, latest


@pytest.fixture(scope="module")
def redis_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: `make setup` installs it (apt-get install -y "
                    "redis-server)")
    d = tmp_path_factory.mktemp("redis")
    sock = d / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(d), "--logfile", str(d / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, (d / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not create its socket"
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def _store(sock: Path, prefix: str, ttl_s: int = 3600) -> FeatureStore:
    fs = FeatureStoreConfig(redis_url=f"unix://{sock}", key_prefix=prefix, ttl_s=ttl_s)
    return FeatureStore(fs)


@pytest.fixture
def store(redis_sock: Path, request: pytest.FixtureRequest) -> FeatureStore:
    return _store(redis_sock, f"t:{request.node.name}:")


def vec(device: str = "d1", window: str = "temp_1m", start: int = 0, end: int = 60_000,
        computed: int = 1, **features: float) -> dict[str, Any]:
    return {"device_id": device, "site_id": "s1", "window": window, "window_kind": "TUMBLE",
            "window_start": start, "window_end": end, "event_count": 3,
            "features": features or {"temperature_c.mean": end / 1000.0},
            "feature_spec_version": "spec-1", "computed_at": computed}


def stored(store: FeatureStore, device: str, window: str) -> dict[str, Any]:
    return store.get(device, window)[0].to_dict()


def test_newer_window_replaces_the_stored_one_whole(store: FeatureStore) -> None:
    assert store.upsert(vec(end=60_000, **{"a.mean": 1.0, "b.max": 2.0}))
    assert store.upsert(vec(start=60_000, end=120_000, **{"a.mean": 5.5}))
    got = stored(store, "d1", "temp_1m")
    assert (got["window_start"], got["window_end"]) == (60_000, 120_000)
    assert got["features"] == {"a.mean": 5.5}  # b.max of the older vector is gone
    assert got["site_id"] == "s1" and got["event_count"] == 3 and got["window_kind"] == "TUMBLE"


def test_older_window_is_ignored_and_changes_nothing(store: FeatureStore) -> None:
    assert store.upsert(vec(start=60_000, end=120_000), now_ms=1000)
    r = store.r
    key = store.vector_key("d1", "temp_1m")
    r.pexpire(key, 50_000)  # so a refreshed TTL would show
    before = r.hgetall(key)
    assert not store.upsert(vec(start=0, end=60_000), now_ms=2000)
    assert r.hgetall(key) == before  # materialized_at included
    assert r.pttl(key) <= 50_000


def test_same_window_later_computation_wins_equal_is_a_no_op(store: FeatureStore) -> None:
    assert store.upsert(vec(computed=10, **{"x.count": 3.0}))
    assert store.upsert(vec(computed=20, **{"x.count": 4.0}))  # a late firing
    assert not store.upsert(vec(computed=20, **{"x.count": 99.0}))  # same rank: duplicate
    assert not store.upsert(vec(computed=15, **{"x.count": 98.0}))
    assert stored(store, "d1", "temp_1m")["features"] == {"x.count": 4.0}


def test_same_end_later_start_wins(store: FeatureStore) -> None:
    # Session windows: equal ends, the later start is the newer (shorter) session.
    assert store.upsert(vec(window="vib_session", start=1000, end=9000))
    assert store.upsert(vec(window="vib_session", start=2000, end=9000))
    assert not store.upsert(vec(window="vib_session", start=1500, end=9000, computed=99))
    assert stored(store, "d1", "vib_session")["window_start"] == 2000


def test_ttl_is_set_on_the_vector_and_the_index(store: FeatureStore) -> None:
    store.upsert(vec())
    pttl_v = store.r.pttl(store.vector_key("d1", "temp_1m"))
    pttl_i = store.r.pttl(store.index_key("d1"))
    assert 3_590_000 < pttl_v <= 3_600_000 and 3_590_000 < pttl_i <= 3_600_000
    assert 3590 < store.get("d1")[0].ttl_left_s <= 3600  # type: ignore[operator]


def test_entries_expire_after_the_ttl(redis_sock: Path) -> None:
    store = _store(redis_sock, "t:expire:", ttl_s=1)
    store.upsert(vec())
    assert store.get("d1")
    time.sleep(1.3)
    with pytest.raises(UnknownDevice, match="expired after feature_store.ttl_s = 1 s"):
        store.get("d1")


def test_replay_in_any_order_is_a_no_op(store: FeatureStore) -> None:
    rng = random.Random(7)
    stream = [vec(device=f"d{d}", window=w, start=t * 60_000, end=(t + 1) * 60_000,
                  computed=t * 10 + c, **{"f.mean": rng.random()})
              for d in range(3) for w in ("temp_1m", "vib_5m") for t in range(5) for c in range(2)]
    for v in stream:
        store.upsert(v)
    keys = sorted(store.r.keys(store.fs.key_prefix + "*"))
    snapshot = {k: store.r.dump(k) for k in keys}
    replay = stream * 2
    rng.shuffle(replay)
    assert not any(store.upsert(v) for v in replay)
    assert {k: store.r.dump(k) for k in sorted(store.r.keys(store.fs.key_prefix + "*"))} == snapshot


def _store_as_oracle(store: FeatureStore, devices: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for d in devices:
        try:
            for sv in store.get(d):
                out[(sv.device_id, sv.window)] = sv.to_dict()
        except UnknownDevice:
            pass
    return out


def _random_stream(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    stream = []
    for _ in range(400):
        t = rng.randrange(20)
        stream.append(vec(device=f"d{rng.randrange(6)}", window=rng.choice(["temp_1m", "vib_5m"]),
                          start=t * 60_000, end=(t + 1) * 60_000, computed=rng.randrange(3),
                          **{"f.mean": float(rng.randrange(1000))}))
    stream += rng.sample(stream, 100)  # duplicates, anywhere
    rng.shuffle(stream)
    return stream


def test_random_out_of_order_stream_equals_the_oracle(store: FeatureStore) -> None:
    stream = _random_stream(11)
    for v in stream:
        store.upsert(v)
    devices = sorted({v["device_id"] for v in stream})
    assert diff(latest(stream), _store_as_oracle(store, devices)) == []


def test_negative_control_last_write_wins_is_caught(store: FeatureStore) -> None:
    """The oracle comparison can fail: a plain HSET per record (last write wins) ends
    with older windows where the stream was out of order."""
    stream = _random_stream(12)
    for v in stream:
        keys, args = store._args(v, 0, "")
        store.r.delete(keys[0])
        store.r.hset(keys[0], mapping=dict(zip(
            ["window_end", "window_start", "computed_at", *args[5::2]],
            [*args[:3], *args[6::2]], strict=True)))
        store.r.sadd(keys[1], v["window"])
    devices = sorted({v["device_id"] for v in stream})
    assert diff(latest(stream), _store_as_oracle(store, devices)) != []


def test_absorbed_offsets_advance_only_from_where_redis_is(store: FeatureStore) -> None:
    k = "features:0"
    _, moved = store.upsert_batch([], {k: (-1, 10)})
    assert moved[k] == (True, None) and store.absorbed([k]) == {k: 10}
    _, moved = store.upsert_batch([], {k: (10, 25)})
    assert moved[k] == (True, 10) and store.absorbed([k]) == {k: 25}
    _, moved = store.upsert_batch([], {k: (40, 50)})  # Redis is behind: refused
    assert moved[k] == (False, 25) and store.absorbed([k]) == {k: 25}
    store.r.delete(store.offsets_key)  # Redis lost everything
    _, moved = store.upsert_batch([], {k: (25, 30)})
    assert moved[k] == (False, None) and store.absorbed([k]) == {k: None}


def test_batch_upsert_reports_written_and_stale(store: FeatureStore) -> None:
    items = [(vec(end=120_000, start=60_000), "t/0/0"), (vec(end=60_000), "t/0/1"),
             (vec(end=180_000, start=120_000), "t/0/2"), (vec(end=180_000, start=120_000), "t/0/3")]
    written, _ = store.upsert_batch(items, {})
    assert written == [True, False, True, False]
    assert store.get("d1")[0].source == "t/0/2"


def test_unknown_device_and_unknown_window(store: FeatureStore) -> None:
    store.upsert(vec())
    with pytest.raises(UnknownDevice, match="device 'nope'"):
        store.get("nope")
    with pytest.raises(UnknownDevice, match="window 'vib_5m' of device 'd1'"):
        store.get("d1", "vib_5m")


def test_device_ids_with_colons_and_glob_characters(store: FeatureStore) -> None:
    store.upsert(vec(device="plant:7*[a]"))
    store.upsert(vec(device="plant"))
    assert [sv.device_id for sv in store.get("plant:7*[a]")] == ["plant:7*[a]"]
    assert store.devices() == ["plant", "plant:7*[a]"]


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    store = FeatureStore(FeatureStoreConfig(redis_url=f"unix://{tmp_path}/none.sock",
                                            socket_timeout_s=1))
    with pytest.raises(StoreUnavailable, match=r"unix://.*none.sock is unreachable"):
        store.get("d1")


def test_redis_url_refuses_a_password() -> None:
    with pytest.raises(ValueError, match="must not be in the config file"):
        SluiceConfig.model_validate({"feature_store": {"redis_url": "redis://u:pw@h:1/0"}})


def test_stack_redis_conf_persists_nothing_and_binds_loopback(tmp_path: Path) -> None:
    conf = redis_conf(StackPorts(redis=23456), tmp_path)
    lines = dict(line.split(" ", 1) for line in conf.splitlines() if line and line[0] != "#")
    assert lines["bind"] == "127.0.0.1" and lines["port"] == "23456"
    assert lines["save"] == '""' and lines["appendonly"] == "no"
    assert lines["dir"] == str(tmp_path)


def test_check_redis_of_a_free_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, detail = check_redis(port, timeout=1)
    assert not ok and "nothing answers" in detail


def test_client_library_is_the_one_pinned() -> None:
    assert redis.__version__.split(".")[0] == "5"  # apache-beam (PyFlink) needs redis<6

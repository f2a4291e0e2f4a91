"""Codec micro-benchmark: the Rust module vs fastavro vs the `avro` package, same data,
same run. `make bench` runs it; results go to out/bench/codec.json and codec.png.

Absolute numbers drift on a shared 2-core machine; quote the ratios of one run.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import avro.io
import avro.schema
import fastavro
import pytest

from sluice.config import REPO_ROOT, load_config
from sluice.generator import plan
from sluice.native import AvroDecoder, AvroEncoder

pytestmark = pytest.mark.bench

SCHEMAS = REPO_ROOT / "schemas" / "telemetry-value"
OUT = REPO_ROOT / "out" / "bench"


def _plain(schema: object) -> object:
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _best_of(fn: Callable[[], None], n: int, repeat: int = 5) -> float:
    """Best per-record µs over `repeat` timed passes of `n` records."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def test_codec_throughput() -> None:
    cfg = load_config(REPO_ROOT / "sluice.yaml", env={}).with_overrides(
        generator={"records": 20_000, "writer_weights": {"v1": 1.0}, "corrupt_non_avro": 0,
                   "corrupt_unknown_schema": 0, "corrupt_truncated": 0,
                   "corrupt_each_rare_kind": 0, "frame_share": 0, "maintenance_share": 0}
    )
    v1_text, v2_text = (SCHEMAS / "v1.avsc").read_text(), (SCHEMAS / "v2.avsc").read_text()
    # fastavro would turn timestamp-millis into datetimes, which sluice does not do:
    # drop the logical types so both sides do the same work.
    v1 = fastavro.parse_schema(_plain(json.loads(v1_text)))
    v2 = fastavro.parse_schema(_plain(json.loads(v2_text)))
    readings = [r.as_avro() for r in plan(cfg, start_ms=1_700_000_000_000, step_ms=10)]
    bodies = []
    for r in readings:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, v1, r)
        bodies.append(buf.getvalue())
    framed = [b"\x00" + (1).to_bytes(4, "big") + b for b in bodies]
    n = len(framed)

    dec = AvroDecoder(v2_text)
    dec.add_writer_schema(1, v1_text)
    enc = AvroEncoder(v1_text, 1)
    tuples = [tuple(r.values()) for r in readings]
    avro_reader = avro.io.DatumReader(avro.schema.parse(v1_text), avro.schema.parse(v2_text))

    def rust_decode() -> None:
        for m in framed:
            dec.decode(m)

    def fastavro_decode() -> None:
        for b in bodies:
            fastavro.schemaless_reader(io.BytesIO(b), v1, v2)

    def avro_decode() -> None:
        for b in bodies[: n // 10]:
            avro_reader.read(avro.io.BinaryDecoder(io.BytesIO(b)))

    def rust_encode() -> None:
        for t in tuples:
            enc.encode(t)

    def fastavro_encode() -> None:
        for r in readings:
            fastavro.schemaless_writer(io.BytesIO(), v1, r)

    # Correctness first: the benchmark compares equal work.
    sample = dec.decode(framed[0])[1]
    expected = fastavro.schemaless_reader(io.BytesIO(bodies[0]), v1, v2)
    assert sample == tuple(expected[f] for f in dec.reader_field_names)
    assert enc.encode(tuples[0])[5:] == bodies[0]

    results = {
        "records": n,
        "decode_us": {
            "rust (sluice._native)": _best_of(rust_decode, n),
            "fastavro": _best_of(fastavro_decode, n),
            "avro (pure Python)": _best_of(avro_decode, n // 10, repeat=2),
        },
        "encode_us": {
            "rust (sluice._native)": _best_of(rust_encode, n),
            "fastavro": _best_of(fastavro_encode, n),
        },
    }
    results["decode_speedup_vs_fastavro"] = (
        results["decode_us"]["fastavro"] / results["decode_us"]["rust (sluice._native)"]
    )
    results["encode_speedup_vs_fastavro"] = (
        results["encode_us"]["fastavro"] / results["encode_us"]["rust (sluice._native)"]
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "codec.json").write_text(json.dumps(results, indent=2) + "\n")
    _chart(results, OUT / "codec.png")
    print(json.dumps(results, indent=2))
    # The point of the Rust module: it must beat the best pure-Python-callable codec.
    assert results["decode_speedup_vs_fastavro"] > 2
    assert results["encode_speedup_vs_fastavro"] > 2


def _chart(results: dict, path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "decode_us", "decode v1→v2 (resolved)"),
                           (axes[1], "encode_us", "encode")):
        names = list(results[key])
        vals = [results[key][k] for k in names]
        ax.barh(names, vals, color=["#3b7dd8", "#999999", "#cccccc"][: len(vals)])
        ax.set_xscale("log")
        ax.set_xlabel("µs per record (log)")
        ax.set_title(title)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

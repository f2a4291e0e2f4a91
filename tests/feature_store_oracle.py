"""An independent oracle of the online feature store: from the FeatureVector records a
read_committed reader can see, the latest per (device, window) - straight from the list,
sharing no code with sluice/feature_store.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any


def _ms(v: Any) -> int:
    if isinstance(v, datetime):
        return round(v.replace(tzinfo=v.tzinfo or UTC).timestamp() * 1000)
    return int(v)


def latest(vectors: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(device_id, window) -> the vector with the greatest (window_end, window_start,
    computed_at); among equal ones the first (a duplicate changes nothing)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for v in vectors:
        k = (v["device_id"], v["window"])
        rank = (_ms(v["window_end"]), _ms(v["window_start"]), _ms(v["computed_at"]))
        cur = best.get(k)
        if cur is None or rank > (_ms(cur["window_end"]), _ms(cur["window_start"]),
                                  _ms(cur["computed_at"])):
            best[k] = dict(v)
    return best


def comparable(v: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must agree between the oracle's vector and the stored one."""
    return (v["device_id"], v["window"], _ms(v["window_start"]), _ms(v["window_end"]),
            _ms(v["computed_at"]), int(v["event_count"]), v.get("site_id"),
            str(v["feature_spec_version"]), tuple(sorted((k, float(x)) for k, x in
                                                         v["features"].items())))


def diff(expected: Mapping[tuple[str, str], Mapping[str, Any]],
         actual: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """Human-readable differences (empty when the store equals the oracle)."""
    out = []
    for k in sorted(set(expected) | set(actual)):
        if k not in actual:
            out.append(f"{k}: missing from the store")
        elif k not in expected:
            out.append(f"{k}: in the store but not in the oracle")
        elif comparable(expected[k]) != comparable(actual[k]):
            out.append(f"{k}: store {comparable(actual[k])[2:6]} != oracle "
                       f"{comparable(expected[k])[2:6]}")
    return out

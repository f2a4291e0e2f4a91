"""The reference-data rules and the sites file, without a JVM (docs/reference-data.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.reference import (
    LATE,
    MISSING,
    VALID,
    DeviceVersion,
    SitesTable,
    latest_maintenance,
    load_sites,
    prune_before_deletions,
    state_expired,
    version_at,
    versions_from_csv,
)
from tests import reference_oracle

REPO = Path(__file__).resolve().parents[2]


def test_version_at_picks_the_version_valid_at_the_reading() -> None:
    vf = [100, 200, 300]
    assert version_at(vf, 99, 0) == (MISSING, None)
    assert version_at(vf, 100, 0) == (VALID, 100)  # valid_from is inclusive
    assert version_at(vf, 199, 0) == (VALID, 100)
    assert version_at(vf, 200, 0) == (VALID, 200)
    assert version_at(vf, 10_000, 0) == (VALID, 300)


def test_version_at_holds_for_a_late_first_version() -> None:
    vf = [1_000]
    assert version_at(vf, 900, 100) == (LATE, 1_000)  # exactly the hold away
    assert version_at(vf, 899, 100) == (MISSING, None)
    assert version_at([], 899, 10**9) == (MISSING, None)


def test_a_deletion_makes_the_device_unknown_from_its_time_on() -> None:
    vf, deleted = [100, 200, 400], [300]
    assert version_at(vf, 299, 0, deleted) == (VALID, 200)
    assert version_at(vf, 300, 0, deleted) == (MISSING, None)  # the deletion is inclusive
    assert version_at(vf, 399, 0, deleted) == (MISSING, None)
    assert version_at(vf, 400, 0, deleted) == (VALID, 400)  # registered again
    # Held: a version after the deletion within the hold is used, as LATE.
    assert version_at(vf, 350, 50, deleted) == (LATE, 400)
    assert version_at(vf, 349, 50, deleted) == (MISSING, None)
    # A version and a deletion at the same millisecond: the deletion wins.
    assert version_at([100, 300], 300, 0, [300]) == (MISSING, None)
    # Without deletions the rule is unchanged (negative control for the deletion).
    assert version_at(vf, 350, 0) == (VALID, 200)


def test_the_oracle_has_the_same_deletion_semantics() -> None:
    """tests/reference_oracle.py is written separately; it must agree with the operator's
    rule at every boundary (and disagree once the deletion is left out)."""
    versions = [DeviceVersion("d", 100), DeviceVersion("d", 200), DeviceVersion("d", 400)]
    cases = {t: version_at([100, 200, 400], t, 50, [300])
             for t in (99, 100, 299, 300, 349, 350, 399, 400, 500)}
    from sluice.generator import Generated, Reading

    gen = Generated(readings=[Reading(f"r{t}", "d", t, 20.0, 1.0, "OK", 50.0, "1", 4, "v3")
                              for t in cases])
    got = reference_oracle.expected(gen, versions, {}, hold_ms=50, before_ms=0, after_ms=0,
                                    deletions=[("d", 300), ("other", 100)])
    assert {t: (got[f"r{t}"]["reference_status"], got[f"r{t}"]["device_version"])
            for t in cases} == cases
    without = reference_oracle.expected(gen, versions, {}, hold_ms=50, before_ms=0,
                                        after_ms=0)
    assert without["r300"]["reference_status"] == VALID


def test_prune_before_deletions_keeps_what_a_reading_can_still_use() -> None:
    assert prune_before_deletions([100, 200, 400], [300], 300) == ([], [])
    assert prune_before_deletions([100, 200, 400], [300], 301) == ([100, 200], [300])
    assert prune_before_deletions([100, 500], [150, 300], 1000) == ([100], [150, 300])
    # After the prune the answer for every reading at or after the horizon is the same.
    for t in range(301, 600, 7):
        assert version_at([400], t, 50, []) == version_at([100, 200, 400], t, 50, [300])


def test_device_state_expires_only_when_idle_and_nothing_waits() -> None:
    assert not state_expired(1_000, 1_999, 1_000, waiting=False)
    assert state_expired(1_000, 2_000, 1_000, waiting=False)
    assert not state_expired(1_000, 9_999, 1_000, waiting=True)  # a held reading is kept
    assert not state_expired(1_000, 10**12, 0, waiting=False)  # 0: no TTL
    assert not state_expired(None, 10**12, 1_000, waiting=False)  # already cleared


def test_latest_maintenance_within_the_interval_one_label() -> None:
    orders = [(90, "wo-a", "REPAIR"), (110, "wo-c", "INSPECTION"), (110, "wo-b", "REPAIR"),
              (131, "wo-d", "REPAIR")]
    assert latest_maintenance(orders, 100, 10, 10) == (110, "wo-c", "INSPECTION")
    assert latest_maintenance(orders, 100, 10, 0) == (90, "wo-a", "REPAIR")
    assert latest_maintenance(orders, 100, 9, 0) is None
    assert latest_maintenance(orders, 121, 0, 10) == (131, "wo-d", "REPAIR")
    assert latest_maintenance(orders, 121, 0, 9) is None


def test_sites_table_refreshes_on_change_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("site_id,region,timezone,energy_price_per_kwh\ns1,r1,UTC,0.10\n")
    now = [0.0]
    table = SitesTable(path, 5.0, clock=lambda: now[0])
    assert table.get("s1").energy_price_per_kwh == 0.10
    path.write_text("site_id,region,timezone,energy_price_per_kwh\ns1,r1,UTC,0.25\ns2,r2,UTC,1\n")
    os.utime(path, ns=(1, 10**18))
    now[0] = 4.9
    assert table.get("s1").energy_price_per_kwh == 0.10  # not checked yet
    now[0] = 5.0
    assert table.get("s1").energy_price_per_kwh == 0.25
    assert table.get("s2").region == "r2" and table.reloads == 1
    # A broken file keeps the last good table.
    path.write_text("site_id,region,timezone,energy_price_per_kwh\ns1,r1,UTC,not-a-number\n")
    os.utime(path, ns=(1, 2 * 10**18))
    now[0] = 20.0
    assert table.get("s1").energy_price_per_kwh == 0.25 and table.errors == 1
    assert table.get(None) is None and table.get("nowhere") is None


def test_load_sites_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("site_id,region,timezone,energy_price_per_kwh\ns1,r,UTC,1\n,r,UTC,2\n")
    with pytest.raises(ValueError, match=r"sites.csv:3"):
        load_sites(path)
    assert set(load_sites(REPO / "reference" / "sites.csv")) == {
        "plant-north", "plant-south", "warehouse-east"}


def test_versions_from_csv_valid_from_precedence(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(
        "device_id,site_id,device_model,max_temperature_c,installed_at,calibration_offset_c,"
        "valid_from,decommissioned\n"
        "d1,s,M,75,2024-01-15,,,\n"
        "d1,s,M,70,2024-01-15,0.5,1800000000000,true\n"
        "d2,,,,,,,\n")
    v = versions_from_csv(path)
    assert v[0].valid_from == 1705276800000 and v[0].calibration_offset_c == 0.0
    assert v[0].installed_at == 1705276800000 and not v[0].decommissioned
    assert v[1].valid_from == 1800000000000 and v[1].calibration_offset_c == 0.5
    assert v[1].max_temperature_c == 70.0 and v[1].decommissioned
    assert v[2].site_id is None and v[2].max_temperature_c is None and v[2].valid_from > 0
    assert {x.valid_from for x in versions_from_csv(path, 42)} == {42}
    path.write_text("device_id,max_temperature_c\nd1,hot\n")
    with pytest.raises(ValueError, match=r"devices.csv:2"):
        versions_from_csv(path)


def test_the_shipped_devices_csv_gives_one_version_per_device() -> None:
    v = versions_from_csv(REPO / "reference" / "devices.csv")
    assert len(v) == len({x.device_id for x in v}) == 18


def test_reference_joins_are_off_by_default() -> None:
    cfg = SluiceConfig()
    assert cfg.reference.joins is False
    assert cfg.reference.device_state_ttl_ms == 30 * 86_400_000
    assert cfg.topics.joined in cfg.topics.all()
    assert cfg.schema_path(cfg.schemas.joined).is_file()

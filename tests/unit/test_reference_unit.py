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
    SitesTable,
    latest_maintenance,
    load_sites,
    version_at,
    versions_from_csv,
)

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
    assert cfg.topics.joined in cfg.topics.all()
    assert cfg.schema_path(cfg.schemas.joined).is_file()

"""sluice.package pieces that need no cluster: manifest, command, config rewrite."""

from __future__ import annotations

from pathlib import Path

from sluice.config import REPO_ROOT, load_config
from sluice.package import (
    flink_command,
    package_config,
    submit_lines,
    verify_manifest,
    wheel_content_hash,
)


def test_manifest_check_catches_a_changed_file(tmp_path: Path) -> None:
    from sluice.package import write_manifest

    """Negative control for verify_manifest: a changed, a missing and an extra file."""
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    write_manifest(tmp_path, {})
    assert verify_manifest(tmp_path) == []
    (tmp_path / "a.txt").write_text("changed")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "c.txt").write_text("c")
    assert sorted(verify_manifest(tmp_path)) == [
        "missing: b.txt", "not in the manifest: c.txt", "sha256 differs: a.txt"]


def test_the_command_runs_the_archive_on_workers_and_client() -> None:
    cmd = flink_command(["k.jar"])
    assert cmd == ["flink", "run", "-pyarch", "python-env.zip",
                   "-pyexec", "python-env.zip/venv/bin/python",
                   "-pyclientexec", "python-env.zip/venv/bin/python",
                   "-j", "jars/k.jar", "-py", "$PWD/jobs/pipeline.py", "--config", "$PWD/sluice.yaml"]
    assert submit_lines(cmd) == [
        "flink run -pyarch python-env.zip -pyexec python-env.zip/venv/bin/python -pyclientexec "
        'python-env.zip/venv/bin/python -j jars/k.jar -py "$PWD/jobs/pipeline.py" '
        '--config "$PWD/sluice.yaml"']


def test_packaged_config_resolves_against_its_own_folder(tmp_path: Path) -> None:
    import yaml

    cfg = load_config(REPO_ROOT / "sluice.yaml", env={})
    raw = {"base_dir": str(REPO_ROOT), "topics": {"alerts": "a"}, "job": {"name": "x"}}
    data = package_config(raw, cfg, ["k.jar"])
    assert "base_dir" not in data
    assert data["job"] == {"name": "x", "jars": ["jars/k.jar"]}
    (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(data))
    shipped = load_config(tmp_path / "sluice.yaml", env={})
    assert shipped.path(shipped.job.jars[0]) == tmp_path / "jars" / "k.jar"


def test_wheel_hash_ignores_the_sbom(tmp_path: Path) -> None:
    import zipfile

    def wheel(name: str, sbom: str, code: str) -> Path:
        p = tmp_path / name
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("sluice/x.py", code)
            zf.writestr("sluice-0.1.0.dist-info/sboms/u.json", sbom)
            zf.writestr("sluice-0.1.0.dist-info/RECORD", sbom)
        return p

    a, b = wheel("a.whl", "uuid-1", "x = 1"), wheel("b.whl", "uuid-2", "x = 1")
    assert wheel_content_hash(a) == wheel_content_hash(b)
    assert wheel_content_hash(a) != wheel_content_hash(wheel("c.whl", "uuid-1", "x = 2"))

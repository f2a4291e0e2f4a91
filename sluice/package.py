"""`sluice package`: everything `flink run` needs to run a sluice job on any Flink 2.2
cluster whose workers do not have our Python environment (docs/deploy.md).

Output (default ``out/package/``)::

    wheels/sluice-<v>-cp311-cp311-manylinux_2_34_x86_64.whl   the package + Rust module (maturin)
    requirements.txt      the exact versions installed in the environment (pip freeze)
    python-env.zip        venv/: a relocatable CPython 3.11 with the wheel and its deps
    jars/                 connector jars (job.jars)
    jobs/                 the job entry scripts (jobs/pipeline.py and what it imports)
    sluice.yaml           the job config, paths relative to this folder
    schemas/ reference/ features.yaml ...   files the config names (read by the client)
    submit.sh             the printed `flink run` command
    manifest.json         every file above with its size and sha256

Why a bundled interpreter rather than a plain venv: a venv's ``bin/python`` is a
symlink to the interpreter it was made from (``home`` in pyvenv.cfg) and its standard
library stays there, so a zipped venv only runs where that exact path exists. The
archive therefore carries the interpreter itself (``bin/python3.11``, ``libpython3.11.so``,
the standard library) with the packages installed into its own ``site-packages`` by
pip. ``bin/python`` is a small launcher that puts the bundled ``lib/`` first on the
library path (the interpreter's RUNPATH names the build machine's prefix) and execs
the interpreter, which finds its standard library relative to itself. What the
workers still need from their OS: x86_64 Linux with glibc >= the build machine's
(``manifest.json`` records it) and the usual shared libraries (libssl3, libffi8, zlib).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sluice.config import REPO_ROOT, SluiceConfig, load_config

DEFAULT_OUT = REPO_ROOT / "out" / "package"
DEFAULT_JOB = REPO_ROOT / "jobs" / "pipeline.py"
# Maturin checks the wheel's symbol versions against the tag and refuses a tag the
# build does not meet: with this machine's toolchain (glibc 2.36, no zig) the module
# needs GLIBC_2.34, so manylinux_2_34 is the oldest honest tag. `--zig` with the
# `ziglang` package installed builds for manylinux_2_28.
DEFAULT_COMPATIBILITY = "manylinux_2_34"
ENV_ARCHIVE = "python-env.zip"
ENV_DIR = "venv"
# Where the archive's interpreter is once Flink has extracted it (into a folder named
# after the archive): on every worker, and on the client too (with -pyarch, `flink run`
# extracts the archives for the client and resolves -pyclientexec inside them).
WORKER_PYTHON = f"{ENV_ARCHIVE}/{ENV_DIR}/bin/python"
CLIENT_PYTHON = WORKER_PYTHON
# Never inside the archive: the Flink distribution's jars (the cluster has its own; the
# workers run Python only and the client talks to the `flink` CLI's JVM), and what
# only serves development. Saves ~330 MB per TaskManager extraction.
_PRUNE_SITE = ("pyflink/lib", "pyflink/opt", "pyflink/plugins", "pyflink/examples")
_PRUNE_STDLIB = {"test", "site-packages", "idlelib", "tkinter", "turtledemo", "lib2to3",
                 "__pycache__"}
# Files of the job folder that the entry script imports (jobs/pipeline.py imports
# jobs.reference when reference.joins is on).
_JOB_FILES = ("pipeline.py", "reference.py")

Progress = Callable[[str], None]


class PackageError(RuntimeError):
    """A packaging step failed; the message names the step and the command."""


@dataclass
class PackageResult:
    out: Path
    wheel: Path
    archive: Path
    command: list[str]
    archive_cached: bool
    manifest: Path
    timings: dict[str, float] = field(default_factory=dict)

    def command_lines(self) -> list[str]:
        return submit_lines(self.command)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise PackageError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout + proc.stderr


# --- 1. the wheel -------------------------------------------------------------------------
def _maturin() -> str:
    local = Path(sys.executable).parent / "maturin"
    found = str(local) if local.exists() else shutil.which("maturin")
    if not found:
        raise PackageError("maturin is not installed (pip install -e '.[dev]' installs it)")
    return found


def build_wheel(dest: Path, *, compatibility: str = DEFAULT_COMPATIBILITY,
                zig: bool = False) -> Path:
    """``maturin build --release`` of the repo: one wheel with the `sluice` package and
    its Rust module `sluice._native`, tagged ``compatibility`` (maturin refuses a tag
    whose glibc symbol versions the build exceeds)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("sluice-*.whl"):
        old.unlink()
    cmd = [_maturin(), "build", "--release", "--compatibility", compatibility,
           "--interpreter", sys.executable, "-o", str(dest)]
    if zig:
        cmd.append("--zig")
    _run(cmd, "maturin build", cwd=REPO_ROOT)
    wheels = sorted(dest.glob("sluice-*.whl"))
    if len(wheels) != 1:
        raise PackageError(f"maturin build left {len(wheels)} sluice wheels in {dest}")
    return wheels[0]


def wheel_content_hash(wheel: Path) -> str:
    """sha256 over the wheel's member names and contents (not the zip's metadata), so a
    rebuild of unchanged sources maps to the same cached environment. The SBOM (random
    serial number, timestamp) and RECORD (which hashes the SBOM) are left out."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if "/sboms/" in name or name.endswith(".dist-info/RECORD"):
                continue
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256(zf.read(name)).digest())
    return h.hexdigest()


# --- 2. the relocatable Python environment --------------------------------------------------
LAUNCHER = """#!/bin/sh
# sluice: the bundled CPython, runnable from wherever this folder was extracted.
# The interpreter's RUNPATH names the build machine's prefix: put ours first.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$here/python{ver}" "$@"
"""


def _base_python() -> tuple[Path, str]:
    """The CPython this interpreter was built from: its prefix and ``X.Y``."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    if not (base / "bin" / f"python{ver}").exists():
        raise PackageError(f"{base}/bin/python{ver} not found: cannot bundle the interpreter")
    return base, ver


def _copy_interpreter(dest: Path) -> str:
    """bin/python<ver> (+ launcher), lib/libpython*.so*, lib/python<ver>/ without tests."""
    base, ver = _base_python()
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    shutil.copy2(base / "bin" / f"python{ver}", dest / "bin" / f"python{ver}")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        for lib in (base / "lib").glob(f"libpython{ver}*.so*"):
            if lib.is_file():  # the symlinks' targets, as files (zip has no symlinks)
                shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=True)
    launcher = LAUNCHER.replace("{ver}", ver)
    for name in ("python", "python3"):
        (dest / "bin" / name).write_text(launcher)
        (dest / "bin" / name).chmod(0o755)
    stdlib = base / "lib" / f"python{ver}"
    target = dest / "lib" / f"python{ver}"

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in _PRUNE_STDLIB} if Path(folder) == stdlib else set()
        return skip | {n for n in names if n.startswith("config-") and Path(folder) == stdlib}

    shutil.copytree(stdlib, target, ignore=ignore, symlinks=False)
    (target / "site-packages").mkdir()
    return ver


def build_environment(wheel: Path, dest_zip: Path, *, progress: Progress = print) -> Path:
    """A relocatable CPython with ``wheel`` and its dependencies (from the package index,
    pinned by pyproject), zipped as ``venv/``. Also writes requirements.txt beside it."""
    with tempfile.TemporaryDirectory(prefix="sluice-env-", dir=dest_zip.parent) as tmp:
        root = Path(tmp) / ENV_DIR
        ver = _copy_interpreter(root)
        py = root / "bin" / "python"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        progress("bootstrapping pip into the bundled interpreter")
        _run([str(py), "-m", "ensurepip", "--default-pip"], "ensurepip", env=env)
        progress(f"pip install {wheel.name} and its dependencies (first time: minutes)")
        _run([str(py), "-m", "pip", "install", "--no-warn-script-location",
              "--disable-pip-version-check", str(wheel)], "pip install", env=env)
        site = root / "lib" / f"python{ver}" / "site-packages"
        for rel in _PRUNE_SITE:
            shutil.rmtree(site / rel, ignore_errors=True)
        # Prove it runs from its own folder before shipping it.
        probe = _run([str(py), "-c", "import sys, pyflink, sluice._native, sluice.udfs; "
                      "print(sys.prefix)"], "import check of the environment", env=env)
        if Path(probe.strip().splitlines()[-1]).resolve() != root.resolve():
            raise PackageError(f"the bundled interpreter's sys.prefix is {probe.strip()}, "
                               f"not {root}: it is not using its own standard library")
        freeze = _run([str(py), "-m", "pip", "freeze", "--all"], "pip freeze", env=env)
        (dest_zip.parent / "requirements.txt").write_text(freeze)
        progress(f"zipping {ENV_ARCHIVE}")
        tmp_zip = dest_zip.with_suffix(".zip.part")
        _zip_tree(Path(tmp), tmp_zip, top=ENV_DIR)
        tmp_zip.replace(dest_zip)
    return dest_zip


def _zip_tree(base: Path, dest: Path, *, top: str) -> None:
    """Zip ``base/top`` with Unix permissions (Flink restores them on extraction; the
    launcher and the interpreter must stay executable). Deterministic order."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted((base / top).rglob("*")):
            rel = path.relative_to(base).as_posix()
            if path.is_dir():
                continue
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as f:
                zf.writestr(info, f.read(), compresslevel=1)


def cached_environment(wheel: Path, out: Path, cache: Path, *,
                       progress: Progress = print) -> tuple[Path, bool]:
    """The environment archive for this wheel, built once per (wheel contents, interpreter,
    pruning rules) and kept in ``cache``; copied (hard-linked where possible) into ``out``."""
    base, ver = _base_python()
    key = hashlib.sha256(json.dumps({
        "wheel": wheel_content_hash(wheel), "python": sys.version, "base": str(base),
        "prune": [_PRUNE_SITE, sorted(_PRUNE_STDLIB)], "launcher": LAUNCHER,
    }).encode()).hexdigest()[:16]
    entry = cache / key
    hit = (entry / ENV_ARCHIVE).is_file() and (entry / "requirements.txt").is_file()
    if not hit:
        entry.mkdir(parents=True, exist_ok=True)
        build_environment(wheel, entry / ENV_ARCHIVE, progress=progress)
        for old in cache.iterdir():  # keep the newest entry only: archives are large
            if old != entry and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    for name in (ENV_ARCHIVE, "requirements.txt"):
        target = out / name
        target.unlink(missing_ok=True)
        try:
            os.link(entry / name, target)
        except OSError:
            shutil.copy2(entry / name, target)
    return out / ENV_ARCHIVE, hit


# --- 3. job files, config, command ----------------------------------------------------------
def _config_resources(cfg: SluiceConfig) -> list[Path]:
    """Files and folders (relative to the config's folder) the client reads when it builds
    the job: schemas (with the quality suites), reference tables, the feature spec, models."""
    rels: list[Path] = [cfg.schemas.dir, cfg.quality.suites_dir, cfg.reference.devices_csv,
                        cfg.reference.sites_csv, cfg.models.dir]
    if cfg.features.spec is not None:
        rels.append(cfg.features.spec)
    return [r for r in rels if not r.is_absolute()]


def package_config(raw: dict, cfg: SluiceConfig, jar_names: Iterable[str]) -> dict:
    """The config as the package ships it: ``base_dir`` dropped (paths resolve against the
    package folder) and job.jars pointing at jars/."""
    data = {k: v for k, v in raw.items() if k != "base_dir"}
    job = dict(data.get("job") or {})
    job["jars"] = [f"jars/{n}" for n in jar_names]
    data["job"] = job
    return data


def flink_command(jar_names: Iterable[str], *, job: str = "jobs/pipeline.py",
                  config: str = "sluice.yaml", detached: bool = False) -> list[str]:
    """`flink run` from inside the package folder, with any Flink 2.2 distribution's CLI.
    The script and its config are ``$PWD/...``: the client Python runs inside the folder
    where `flink run` unpacked the archive, so relative paths would not resolve."""
    cmd = ["flink", "run"]
    if detached:
        cmd.append("-d")
    cmd += ["-pyarch", ENV_ARCHIVE, "-pyexec", WORKER_PYTHON, "-pyclientexec", CLIENT_PYTHON]
    for name in jar_names:
        cmd += ["-j", f"jars/{name}"]
    return cmd + ["-py", f"$PWD/{job}", "--config", f"$PWD/{config}"]


def submit_lines(command: list[str]) -> list[str]:
    """The copy-pasteable shell lines (one: `flink run` unpacks the archive itself, for
    the client and for every worker)."""
    return [" ".join(f'"{a}"' if a.startswith("$PWD/") else shlex.quote(a) for a in command)]


def write_manifest(out: Path, meta: dict) -> Path:
    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel == "manifest.json":
            continue
        files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({**meta, "files": files}, indent=2) + "\n")
    return manifest


def verify_manifest(out: Path) -> list[str]:
    """Problems with a package folder against its manifest: missing, changed, unlisted."""
    doc = json.loads((out / "manifest.json").read_text())
    problems = []
    listed = set()
    for entry in doc["files"]:
        path = out / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            problems.append(f"missing: {entry['path']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"sha256 differs: {entry['path']}")
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in listed and rel != "manifest.json":
            problems.append(f"not in the manifest: {rel}")
    return problems


def build_package(
    config: Path | None = None,
    out: Path = DEFAULT_OUT,
    *,
    job: Path = DEFAULT_JOB,
    compatibility: str = DEFAULT_COMPATIBILITY,
    zig: bool = False,
    cache: Path | None = None,
    progress: Progress = print,
) -> PackageResult:
    cfg_path = Path(config) if config else REPO_ROOT / "sluice.yaml"
    cfg = load_config(cfg_path, env={})  # the file as written: no local env overrides
    raw = yaml.safe_load(cfg_path.read_text()) or {}
    out = out.resolve()
    cache = (cache or out.parent / ".package-cache").resolve()
    if out == REPO_ROOT or REPO_ROOT.is_relative_to(out):
        raise PackageError(f"refusing to package into {out}: it contains the source tree")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    progress(f"maturin build --release --compatibility {compatibility}")
    wheel = build_wheel(out / "wheels", compatibility=compatibility, zig=zig)
    timings["wheel_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    archive, hit = cached_environment(wheel, out, cache, progress=progress)
    timings["environment_s"] = time.monotonic() - t0
    progress(f"{ENV_ARCHIVE}: {'cached' if hit else 'built'} "
             f"({archive.stat().st_size / 1e6:.0f} MB)")

    jar_names = []
    (out / "jars").mkdir()
    for jar in cfg.job.jars:
        src = cfg.path(jar)
        if not src.is_file():
            raise PackageError(f"job.jars: {src} is missing; run `make deps`")
        shutil.copy2(src, out / "jars" / src.name)
        jar_names.append(src.name)

    (out / "jobs").mkdir()
    for name in _JOB_FILES:
        src = job.parent / name
        if src.is_file():
            shutil.copy2(src, out / "jobs" / name)
    if not (out / "jobs" / job.name).is_file():
        shutil.copy2(job, out / "jobs" / job.name)

    for rel in _config_resources(cfg):
        src = cfg.path(rel)
        if src.is_dir():
            shutil.copytree(src, out / rel, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
    (out / "sluice.yaml").write_text(
        "# Written by `sluice package`: relative paths resolve against this folder.\n"
        "# Endpoints: edit here or set BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL; secrets only\n"
        "# from the environment (docs/security.md).\n"
        + yaml.safe_dump(package_config(raw, cfg, jar_names), sort_keys=False))
    load_config(out / "sluice.yaml", env={})  # the shipped config must load on its own

    command = flink_command(jar_names, job=f"jobs/{job.name}")
    lines = submit_lines(command)
    submit = out / "submit.sh"
    submit.write_text("#!/bin/sh\n# Written by `sluice package`. Run from this folder with a Flink "
                      "2.2 `flink` on PATH\n# (FLINK_CONF_DIR or -m host:port names the cluster).\n"
                      "set -e\ncd \"$(dirname \"$0\")\"\n" + "\n".join(lines) + "\n")
    submit.chmod(0o755)
    manifest = write_manifest(out, {
        "sluice_version": wheel.name.split("-")[1],
        "wheel": wheel.name,
        "python": platform.python_version(),
        "glibc": "-".join(platform.libc_ver()),
        "machine": platform.machine(),
        "environment_archive": ENV_ARCHIVE,
        "worker_python": WORKER_PYTHON,
        "client_python": CLIENT_PYTHON,
        "command": lines,
    })
    return PackageResult(out=out, wheel=wheel, archive=archive, command=command,
                         archive_cached=hit, manifest=manifest, timings=timings)

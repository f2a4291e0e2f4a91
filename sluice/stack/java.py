"""Find a suitable JDK for each component.

Kafka 4.1 needs Java 17+, Flink 2.2 runs on 11/17/21, Apicurio Registry 3.3 needs 21+.
Lookup order: the component's override variable, ``SLUICE_JAVA_HOME``, ``JAVA_HOME``,
``java`` on ``PATH``, then the usual system JDK folders (newest-first is *not* assumed:
the lowest version inside the allowed range wins, so a default JDK 17 is used for
Kafka/Flink and a 21+ one only where it is required).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .models import StackError

#: Where distributions put JDKs (searched only when the variables/PATH do not fit).
SYSTEM_JVM_DIRS: tuple[str, ...] = (
    "/usr/lib/jvm",
    "/usr/java",
    "/opt/java",
    "/usr/local/lib/jvm",
    "/Library/Java/JavaVirtualMachines",
)


@dataclass(frozen=True)
class Jdk:
    home: Path
    version: int

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"


def _major(version: str) -> int | None:
    m = re.match(r'"?(\d+)(?:\.(\d+))?', version)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8" -> 8


def jdk_version(home: Path) -> int | None:
    """Major Java version of the JDK/JRE at ``home`` (reads ``release``, else runs java)."""
    release = home / "release"
    try:
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                return _major(line.split("=", 1)[1].strip().strip('"'))
    except OSError:
        pass
    java = home / "bin" / "java"
    if not os.access(java, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=20, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "([^"]+)"', out)
    return _major(m.group(1)) if m else None


def _home_of(path: str | Path) -> Path:
    p = Path(path)
    if p.name == "java" and p.parent.name == "bin":  # a java binary rather than a home
        return p.resolve().parent.parent
    return p


def _candidates(env_var: str | None) -> list[Path]:
    """Explicit homes (variables, PATH) in order, then system JDK folders."""
    out: list[Path] = []
    for var in (env_var, "SLUICE_JAVA_HOME", "JAVA_HOME"):
        if var and os.environ.get(var):
            out.append(_home_of(os.environ[var]))
    which = shutil.which("java")
    if which:
        out.append(_home_of(which))
    for d in SYSTEM_JVM_DIRS:
        base = Path(d)
        if not base.is_dir():
            continue
        for sub in sorted(base.iterdir()):
            home = sub / "Contents" / "Home" if (sub / "Contents" / "Home").is_dir() else sub
            if (home / "bin" / "java").exists() and not sub.is_symlink():
                out.append(home)
    return out


def find_jdk(
    min_version: int,
    max_version: int | None = None,
    *,
    env_var: str | None = None,
    purpose: str = "java",
) -> Jdk:
    """The first explicit JDK (override variable, SLUICE_JAVA_HOME, JAVA_HOME, PATH) whose
    version is within [min_version, max_version]; failing that, the lowest fitting version
    found in the system JDK folders."""
    n_explicit = sum(
        1 for var in (env_var, "SLUICE_JAVA_HOME", "JAVA_HOME") if var and os.environ.get(var)
    ) + (1 if shutil.which("java") else 0)
    seen: set[Path] = set()
    fitting: list[tuple[int, int, Jdk]] = []
    for order, home in enumerate(_candidates(env_var)):
        key = home.resolve() if home.exists() else home
        if key in seen:
            continue
        seen.add(key)
        v = jdk_version(home)
        if v is None or v < min_version or (max_version is not None and v > max_version):
            continue
        # explicit ones keep their order; scanned ones sort by version after them
        fitting.append((order if order < n_explicit else n_explicit, v, Jdk(home, v)))
    if not fitting:
        want = f"{min_version}+" if max_version is None else f"{min_version}..{max_version}"
        hint = f"set {env_var} or JAVA_HOME" if env_var else "set JAVA_HOME"
        raise StackError(
            f"{purpose} needs Java {want} and none was found ({hint} to a JDK "
            f"home, or install one under {SYSTEM_JVM_DIRS[0]})",
            component=purpose,
        )
    fitting.sort(key=lambda t: (t[0], t[1]))
    return fitting[0][2]

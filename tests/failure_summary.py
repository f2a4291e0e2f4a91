"""Print the failed and erroring tests of a pytest JUnit XML report, each with the head
of its message, as the last lines of `make test`.

librdkafka clients that outlive the session print connection errors at interpreter exit,
after pytest's own summary; a CI log that keeps only the tail then loses the reason a
test failed. `make test` runs this after pytest and keeps pytest's exit code.

    python -m tests.failure_summary out/test/junit.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HEAD_LINES = 25


def failures(report: Path) -> list[tuple[str, str, str]]:
    """(test id, kind, text) of every failed or erroring test case in the report."""
    root = ET.parse(report).getroot()
    out: list[tuple[str, str, str]] = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is None:
                continue
            path = case.get("classname", "").replace(".", "/")
            test_id = f"{path}.py::{case.get('name', '?')}"
            text = (node.get("message") or "") + "\n" + (node.text or "")
            out.append((test_id, kind, text.strip()))
    return out


def render(items: list[tuple[str, str, str]], head: int = HEAD_LINES) -> str:
    if not items:
        return "failure summary: no failed or erroring test in the report"
    lines = [f"failure summary: {len(items)} failed or erroring test(s)"]
    for test_id, kind, text in items:
        lines.append(f"--- {kind.upper()}: {test_id}")
        body = text.splitlines()
        # The message and the last lines (pytest's "E ..." lines and the location) say most.
        shown = body if len(body) <= head else body[:3] + ["[...]"] + body[-(head - 3):]
        lines.extend("    " + line for line in shown)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.failure_summary JUNIT_XML", file=sys.stderr)
        return 2
    report = Path(argv[0])
    if not report.exists():
        print(f"failure summary: no report at {report} (pytest did not get as far as writing it)")
        return 0
    print(render(failures(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

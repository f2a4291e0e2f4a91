"""tests/failure_summary.py: the last lines of `make test` name every failure and why."""

from __future__ import annotations

from pathlib import Path

from tests.failure_summary import failures, main, render

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" tests="3">
<testcase classname="tests.integration.test_x" name="test_ok" time="0.1"/>
<testcase classname="tests.integration.test_x" name="test_bad[thread]" time="0.2">
<failure message="AssertionError: 3 records joined with the wrong version">{body}</failure>
</testcase>
<testcase classname="tests.e2e.test_y" name="test_z" time="0.0">
<error message="failed on setup with &quot;StackError: port 16379 in use&quot;">trace</error>
</testcase>
</testsuite></testsuites>
"""


def _report(tmp_path: Path, body: str = "E   assert 1 == 2") -> Path:
    p = tmp_path / "junit.xml"
    p.write_text(REPORT.format(body=body))
    return p


def test_every_failure_and_error_is_named_with_its_message(tmp_path: Path) -> None:
    items = failures(_report(tmp_path))
    assert [(i, k) for i, k, _ in items] == [
        ("tests/integration/test_x.py::test_bad[thread]", "failure"),
        ("tests/e2e/test_y.py::test_z", "error"),
    ]
    text = render(items)
    assert text.splitlines()[0] == "failure summary: 2 failed or erroring test(s)"
    assert "3 records joined with the wrong version" in text
    assert "StackError: port 16379 in use" in text


def test_long_tracebacks_keep_their_head_and_tail(tmp_path: Path) -> None:
    body = "\n".join(f"line {n}" for n in range(200))
    text = render(failures(_report(tmp_path, body)), head=10)
    assert "line 199" in text and "line 0" in text and "[...]" in text
    assert "line 100" not in text


def test_a_clean_report_and_a_missing_one_say_so(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert render([]).endswith("no failed or erroring test in the report")
    assert main([str(tmp_path / "absent.xml")]) == 0
    assert "no report at" in capsys.readouterr().out
    assert main([]) == 2

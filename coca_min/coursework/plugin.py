"""The pytest plugin that the grader runs each test with, in a copy made for one exercise.

The grader writes this file into the copy as `_coca_min_grader.py` and runs
`python -m pytest -p _coca_min_grader NODE_ID` there, with these variables set:

    COCA_MIN_GRADE_RESULT   where to write the result (JSON)
    COCA_MIN_GRADE_EXPECT   the copy's coca_min folder: the only coca_min a test may import
    COCA_MIN_GRADE_FORBID   the reference package's folder: no module may come from it
    COCA_MIN_GRADE_COLLECT  (collection only) where to write {node id: [exercise ids]} of the
                            tests marked `@pytest.mark.grades("<id>", ...)`

The result is {"outcome": "passed" | "failed" | "error", "message": the first failure's
message, "coca_min": the file coca_min was imported from, "tests": how many ran}. Only a run
in which every test passed is "passed": a skip is not a pass.
"""

import json
import os
import sys
from pathlib import Path

_state = {"outcome": "passed", "message": "", "tests": 0}


def _fail(outcome, message):
    if _state["outcome"] == "passed":  # keep the first failure
        _state.update(outcome=outcome, message=" ".join(str(message).split())[:400])


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return report.longrepr[2]
    lines = [line for line in str(report.longrepr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    return (errors or lines or ["(no message)"])[-1]


def pytest_configure(config):
    config.addinivalue_line("markers", "grades(*ids): the coursework exercises a hidden test grades")


def pytest_collectreport(report):
    if report.failed:
        _fail("error", f"could not collect {report.nodeid or 'the tests'}: {_message(report)}")


def pytest_collection_modifyitems(items):
    target = os.environ.get("COCA_MIN_GRADE_COLLECT")
    if target:
        marks = {item.nodeid: [i for m in item.iter_markers("grades") for i in m.args] for item in items}
        Path(target).write_text(json.dumps(marks), encoding="utf-8")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _state["tests"] += 1  # a test that ran, or one whose set-up failed or skipped it
    case = f"[{report.nodeid.split('[', 1)[1]} " if "[" in report.nodeid else ""  # which parameters
    if report.failed:
        _fail("failed", f"{case}{_message(report)}")
    elif report.skipped:
        _fail("failed", f"{case}skipped, which is not a pass: {_message(report)}")


def _origin_problem():
    expect, forbid = os.environ.get("COCA_MIN_GRADE_EXPECT"), os.environ.get("COCA_MIN_GRADE_FORBID")
    module = sys.modules.get("coca_min")
    origin = getattr(module, "__file__", None)
    _state["coca_min"] = origin
    if module is not None and expect and not Path(origin or "/").resolve().is_relative_to(Path(expect).resolve()):
        return f"the tests imported coca_min from {origin}, not from the student's package {expect}"
    for name, loaded in list(sys.modules.items()):
        where = getattr(loaded, "__file__", None)
        if forbid and where and Path(where).resolve().is_relative_to(Path(forbid).resolve()):
            return f"module {name} was imported from the reference package ({where})"
    return None


def pytest_sessionfinish(session, exitstatus):
    problem = _origin_problem()
    if problem:
        _state.update(outcome="error", message=problem)  # this outranks any test result
    elif _state["tests"] == 0 and _state["outcome"] == "passed" and not os.environ.get("COCA_MIN_GRADE_COLLECT"):
        _fail("error", "no test ran (is the node id right?)")
    target = os.environ.get("COCA_MIN_GRADE_RESULT")
    if target:
        Path(target).write_text(json.dumps(_state), encoding="utf-8")

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

Run as a script, `python plugin.py --serve`, the same file is the grader's test runner: it
imports torch and pytest once (seconds), then for each task it reads on stdin, one JSON line
{"copy", "test", "env", "log", "timeout", "threads"}, runs that test in a child process forked from itself,
in the copy's folder with the task's variables, stops it after `timeout` seconds, and answers
one line {"code": the exit code, or null when stopped, "seconds"}. It never imports coca_min:
each child imports the copy's.
"""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch  # in the runner: the slow import, made once for all the tests it forks

_state = {"outcome": "passed", "message": "", "tests": 0}


def _fail(outcome, message):
    if _state["outcome"] == "passed":  # keep the first failure
        _state.update(outcome=outcome, message=" ".join(str(message).split())[:400])


def _where(text):
    """ "coca_min/eval/metrics.py, line 60" for the last file of the copy that a traceback names."""
    places = re.findall(r'File "([^"]+)", line (\d+)', text)  # in the order the traceback goes
    ours = [(f, n) for f, n in places if "coca_min/" in f and "site-packages" not in f]
    if not ours:
        return ""
    file, line = ours[-1]
    return f" ({os.path.relpath(file) if os.path.isabs(file) else file}, line {line})"


def _message(report):
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return report.longrepr[2]
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and "Traceback" not in crash.message and 'File "' not in crash.message:
        lines = [line for line in crash.message.splitlines() if line.strip()] or ["(no message)"]
        return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    text = str(report.longrepr)  # a traceback (a child process's, or an import's): its last error
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")] or lines or ["(no message)"]
    last = errors[-1].removeprefix("E").strip()
    return last + (_where(text) if "Error" in last and "coca_min" in text else "")


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



def _run_forked(task: dict) -> dict:
    """One test in a child forked from this process: its own session, folder and variables."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child. Its own session: it and any process it starts are stopped together
        os.setsid()
        os.chdir(task["copy"])
        sys.path[0] = task["copy"]  # the copy's coca_min, the copy's plugin
        os.environ.update(task["env"])
        torch.set_num_threads(task.get("threads", 1))  # tests run side by side: no more threads than cores
        log = os.open(task["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0), os.dup2(log, 1), os.dup2(log, 2)
        code = pytest.main(["-q", "-p", "_coca_min_grader", "-p", "no:cacheprovider", "-o", "addopts=",
                            "--rootdir", task["copy"], task["test"]])  # fmt: skip
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(int(code))
    while time.monotonic() - start < task["timeout"]:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status), "seconds": round(time.monotonic() - start, 2)}
        time.sleep(0.02)
    try:  # still running: stop the test and anything it started
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just now
        pass
    os.waitpid(pid, 0)
    return {"code": None, "seconds": round(time.monotonic() - start, 2)}


def serve() -> None:
    """Answer each task line on stdin with one result line on stdout (see the docstring)."""
    for line in sys.stdin:
        print(json.dumps(_run_forked(json.loads(line))), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()

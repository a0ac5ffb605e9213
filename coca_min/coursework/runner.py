"""The grader's test runner: one process that imports torch once and forks a process per test.

`grade.py` starts one `Runner` per job; each sends its tests, one JSON line each, to a copy of
`plugin.py` run with `--serve`, which forks the test's process (its own session, folder,
variables and torch threads), stops it at the time limit and answers how it ended. The plugin
inside that process writes the test's result. Without the fork, importing torch in every test
process would be most of the grading time.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .student import ROOT


@dataclass
class TestResult:
    test: str
    outcome: str  # "passed", "failed", "error" (collection, import, origin), "timeout", "crashed"
    message: str
    seconds: float


class Runner:
    """A test runner process (`plugin.py --serve`) that has imported torch once and forks a
    process per test: without it, importing torch would be most of the grading time."""

    def __init__(self, workdir: Path, threads: int = 1):
        self.workdir, self.threads = workdir, threads  # torch threads of each test
        self.process = None

    def run(self, copy: Path, test: str, seed: int, timeout: float, root: Path = ROOT) -> TestResult:
        """One test (a pytest node id) in its own process in `copy`, at most `timeout` seconds."""
        if self.process is None or self.process.poll() is not None:
            script = self.workdir / "_coca_min_runner.py"  # outside the reference package
            shutil.copy2(Path(__file__).with_name("plugin.py"), script)
            self.process = subprocess.Popen([sys.executable, str(script), "--serve"],
                                            cwd=self.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            start_new_session=True, text=True)  # fmt: skip
        handle, name = tempfile.mkstemp(prefix="test_", dir=copy)
        os.close(handle)
        result, log = Path(name + ".json"), Path(name + ".log")
        env = {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "COCA_MIN_GRADE_SEED": str(seed),
               "COCA_MIN_GRADING": "1", "COCA_MIN_GRADE_RESULT": str(result),
               "COCA_MIN_GRADE_EXPECT": str(copy / "coca_min"), "COCA_MIN_GRADE_FORBID": str(root / "coca_min"),
               "OMP_NUM_THREADS": str(self.threads)}  # fmt: skip
        task = {"copy": str(copy), "test": test, "env": env, "log": str(log), "timeout": timeout, "threads": self.threads}
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:  # the runner itself died: a new one starts with the next test
            return TestResult(test, "crashed", "the test runner stopped", 0.0)
        ended = json.loads(answer)
        output = log.read_text(errors="replace") if log.is_file() else ""
        tail = " / ".join(line for line in output.splitlines()[-3:] if line.strip())[:300]
        if ended["code"] is None:
            return TestResult(test, "timeout", f"still running after {timeout:g} s: stopped", ended["seconds"])
        try:
            report = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return TestResult(test, "crashed", f"the test process ended with code {ended['code']} and no result: {tail}",
                              ended["seconds"])  # fmt: skip
        if report["outcome"] == "passed" and ended["code"] != 0:  # e.g. an error after the tests
            report = {"outcome": "failed", "message": f"pytest ended with code {ended['code']}: {tail}"}
        return TestResult(test, report["outcome"], report["message"], ended["seconds"])

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

"""python -m coca_min.coursework make-student DEST [--only ID ...]
python -m coca_min.coursework grade STUDENT_DIR [--hidden DIR] [--out grade.json] [--only ID ...]"""

import argparse
import sys
from pathlib import Path

from .exercises import EXERCISES
from .markers import MarkerError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m coca_min.coursework", description="coca_min coursework tools")
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("make-student", help="write the student version of the repository to DEST")
    student.add_argument("dest", help="a new (or empty) folder outside the repository")
    student.add_argument("--only", nargs="+", metavar="ID", help=f"exercises to blank (default: all): {', '.join(EXERCISES)}")
    grader = commands.add_parser("grade", help="grade a student's copy with the reference tests, one exercise at a time")
    grader.add_argument("student", help="the student's copy of the repository (made by make-student)")
    grader.add_argument("--hidden", metavar="DIR", help="a folder of extra test_*.py files, each test marked @pytest.mark.grades(\"<id>\")")
    grader.add_argument("--out", metavar="FILE", help="the JSON report (default: STUDENT_DIR.grade.json, beside the folder)")
    grader.add_argument("--only", nargs="+", metavar="ID", help="grade these exercises only (default: all)")
    grader.add_argument("--seed", type=int, help="the seed of the tests' random inputs (default: a new one, in the report)")
    grader.add_argument("--timeout", type=float, default=120.0, help="seconds each test may run (default: 120)")
    grader.add_argument("--jobs", type=int, help="tests run at once (default: the number of CPUs, at most 4)")
    args = parser.parse_args(argv)
    if args.command == "grade":
        from .grade import grade, table

        out = args.out or str(Path(args.student).resolve().with_name(Path(args.student).resolve().name + ".grade.json"))
        try:
            report = grade(args.student, args.hidden, out, args.seed, args.timeout, args.jobs, args.only)
        except ValueError as error:
            sys.exit(f"error: {error}")
        print(table(report))
        for exercise_id, result in report["exercises"].items():
            for note in result["notes"]:
                print(f"note: {note}")
        print(f"report: {out}")
        return
    from .student import make_student

    try:
        done = make_student(args.dest, args.only)
    except (MarkerError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    count = sum(len(ids) for ids in done["blanked"].values())
    print(f"wrote the student version to {args.dest}: {count} exercise{'s' * (count != 1)} blanked")
    for file, ids in sorted(done["blanked"].items()):
        print(f"  {file}: {', '.join(ids)}")
    for lesson, lines in done["lessons_showing_solutions"].items():
        print(f"note: {lesson} writes a blanked solution's code from scratch ({lines[:80]}…): hand it out after the exercise")


if __name__ == "__main__":
    main()

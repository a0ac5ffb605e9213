"""python -m coca_min.coursework make-student DEST [--only ID ...]"""

import argparse
import sys

from .exercises import EXERCISES
from .markers import MarkerError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m coca_min.coursework", description="coca_min coursework tools")
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("make-student", help="write the student version of the repository to DEST")
    student.add_argument("dest", help="a new (or empty) folder outside the repository")
    student.add_argument("--only", nargs="+", metavar="ID", help=f"exercises to blank (default: all): {', '.join(EXERCISES)}")
    args = parser.parse_args(argv)
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

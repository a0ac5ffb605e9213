"""Coursework: exercises marked in coca_min's own code, for a student version and a grader.

Not part of the paper. An exercise is a region of a function body between two comments,

    # BEGIN EXERCISE contrastive_loss
    ...the reference solution...
    # END EXERCISE

so the reference package stays the one the project runs and tests. `exercises.py` is the
catalogue (file, lesson, points, tests of each exercise); `markers.py` finds and checks the
regions and writes a region's stub; `student.py` writes the student version; `grade.py` grades
a student's copy, one exercise at a time, through `runner.py`, with `plugin.py` inside each test process. For
instructors: README.md in this folder.
"""

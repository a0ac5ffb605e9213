"""The learning-rate schedule and the time budget, driven by a fake clock: exact, whatever the
machine's speed."""

import math

import pytest

from coca_min.schedule import FakeClock, Schedule, TimeBudget


def closed_form(step, peak, warmup, total, min_ratio):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def run_schedule(schedule, totals):
    """lr of every step, the plan after step n being totals[n - 1] (None: no plan yet)."""
    lrs = []
    for n, total in enumerate(totals, start=1):
        lrs.append(schedule.lr(n - 1))
        schedule.advance(n, total)
    return lrs


def test_with_a_fixed_total_the_schedule_is_the_closed_form_cosine():
    lrs = run_schedule(Schedule(2e-3, warmup=10, min_ratio=0.05), [100] * 100)
    expected = [closed_form(s, 2e-3, 10, 100, 0.05) for s in range(100)]
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-15
    assert lrs[9] == 2e-3 and lrs[10] == 2e-3  # the peak at the end of the warm-up, and once more


def test_a_re_planned_total_bends_the_decay_without_a_jump():
    # no plan for 20 steps, then 200 steps planned, then the machine slows: the plan shrinks
    # by one step every step from step 60 on, down to 140 steps in all
    totals = [None] * 20 + [200] * 40 + [max(140, 200 - k) for k in range(1, 81)]
    totals = totals[:140]
    lrs = run_schedule(Schedule(1.0, warmup=10, min_ratio=0.1), totals)
    steps = [abs(b - a) for a, b in zip(lrs, lrs[1:])]
    assert max(steps[10:]) < 2 * (0.9 * 0.5 * math.pi / (140 - 10))  # measured 1.5x the steepest step: a bend
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)  # the floor is still reached at the last step
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # and the decay only goes down


def test_time_budget_plans_from_timed_steps_and_leaves_pauses_out():
    budget = TimeBudget(seconds=30.0, clock=FakeClock(0.5), timing_steps=4)
    plans = [budget.step_done(n) for n in range(1, 5)]
    assert plans == [None, None, None, None]  # the first step is not timed: 3 of 4 timed so far
    budget.not_training()  # e.g. an evaluation: the clock moves on, the budget does not
    assert budget.step_done(5) == 5 + int((30.0 - 2.5) / 0.5)  # 5 steps of 0.5 s spent; 55 left
    assert budget.spent() == 2.5


def test_a_resumed_time_budget_counts_the_time_already_spent():
    budget = TimeBudget(seconds=30.0, clock=FakeClock(0.5), timing_steps=2, spent=20.0)
    assert budget.step_done(41) is None and budget.step_done(42) is None  # its own steps first
    assert budget.step_done(43) == 43 + int((30.0 - 21.5) / 0.5)
    assert TimeBudget(clock=FakeClock(1.0)).step_done(1) is None  # no budget: only keeps time

"""The learning-rate schedule and the time budget of a training run.

Paper §4.1 warms up over the first 2% of 500k steps and then decays linearly; short runs do
better with the usual linear warm-up and cosine decay, which is what `Schedule` gives:

    lr(step) = peak · (step + 1) / warmup                              for step < warmup
    lr(step) = peak · (m + (1 - m) · ½ (1 + cos(π · progress)))        after, m = min_ratio

With a fixed number of steps T, progress = (step - warmup) / (T - warmup), the closed form. A
run with a time budget (`TimeBudget`) only learns T after timing some steps, and re-plans it
after every step; the warm-up is therefore a fixed number of steps known from the start, and
only the decay follows the plan: each step advances the progress by what is left of it divided
by the steps now left, (1 - progress) / (T - step). With T fixed that is 1 / (T - warmup) each
step, the closed form exactly; when T is re-planned the lr bends, but never jumps.

`TimeBudget` turns minutes into steps: it times the steps of this process (not the first, which
allocates memory and compiles), plans once `timing_steps` are timed, and re-plans after every
step from the mean time so far, so a machine that slows down shortens the run instead of
overrunning. Time spent evaluating is left out, and a resumed run starts from the training time
its checkpoint spent. The clock is a parameter, so that tests can drive it exactly.

Used by training (`coca_min/train/`, whose `state.plan` makes both for a run) and by the
probes of `coca_min/eval/`, which train small heads.

Left out: other schedules (linear, step, inverse square root); batch-size warm-up.
"""

import math
import time


class Schedule:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio` · peak over the
    steps planned to remain (see the module docstring). State: the progress of the decay."""

    def __init__(self, peak, warmup, min_ratio=0.05, progress=0.0):
        self.peak, self.warmup, self.min_ratio = peak, warmup, min_ratio
        self.progress = progress  # fraction of the decay done, 0 -> 1 (a resumed run's own)

    def lr(self, step):
        """The learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress))
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * cosine)

    def advance(self, steps_done, total_steps):
        """Call after every optimizer step: `steps_done` steps are done, `total_steps` is the plan
        now (None: not known yet, and the decay waits)."""
        if steps_done > self.warmup and total_steps is not None:
            left = total_steps - (steps_done - 1)  # steps left, the one just done included
            self.progress += (1 - self.progress) / max(1, left)


class TimeBudget:
    """Plans how many steps fit into `seconds` of training (None: only keep time).

    Call `step_done(steps_done)` after every step: it returns the planned total (None until
    `timing_steps` steps of this process are timed). Call `not_training()` after evaluating or
    saving: the time since the last step is then left out."""

    def __init__(self, seconds=None, clock=time.monotonic, timing_steps=20, spent=0.0):
        self.seconds, self.clock, self.timing_steps = seconds, clock, timing_steps
        self.spent_before = spent  # training seconds of earlier sessions of a resumed run
        self.elapsed = 0.0  # training seconds of this session
        self.steps, self.timed_seconds = 0, 0.0  # this session's; all but its first step are timed
        self.last = self.clock()

    def spent(self):
        """Training seconds so far, earlier sessions included."""
        return self.spent_before + self.elapsed

    def step_done(self, steps_done):
        now = self.clock()
        duration, self.last = now - self.last, now
        self.elapsed += duration
        self.steps += 1
        if self.steps > 1:  # the first step of a session allocates and compiles: not typical
            self.timed_seconds += duration
        timed = self.steps - 1
        if self.seconds is None or timed < self.timing_steps:
            return None
        per_step = self.timed_seconds / timed  # (seconds) mean of this session's timed steps
        return steps_done + max(0, int((self.seconds - self.spent()) / per_step))

    def not_training(self):
        """The time since the last step (evaluation, saving) is not training time."""
        self.last = self.clock()


class FakeClock:
    """A clock for tests: every reading is `tick` seconds after the previous one. TimeBudget reads
    it once per step and once after each pause, so every step lasts exactly `tick` seconds."""

    def __init__(self, tick):
        self.tick, self.now = tick, 0.0

    def __call__(self):
        self.now += self.tick
        return self.now

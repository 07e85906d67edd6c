"""How many CPU threads torch computes with: measured where it matters, recorded, reused (no torch import).

Why measure: torch's OpenMP threads spin-wait for each other. On an idle 2-core machine a
2x256 LSTM trains at 21.7k chars/s on 2 threads and 12.6k on 1; beside one busy process the
same 2 threads fall to 8.6k while 1 thread keeps 14.5k (under heavy load, 0.3k against 14k
for a forward pass). No count fixed in advance is right for both, and the load average only
lags behind what the machine does now. So charnn times the work itself.

The policy (:func:`choose`), first rule that applies:

1. ``--threads N``: N, always.
2. ``--resume``: the count the run recorded, so a resumed run computes what it would have.
3. ``OMP_NUM_THREADS`` set (by you, or by ``torchrun`` with several processes per machine):
   torch already obeys it; charnn records it.
4. Not the CPU (CUDA, MPS): torch's own default; the CPU only feeds the device.
5. One candidate only (one core per process): that.
6. A run too short for a measurement to pay (under :data:`MIN_PROBE_STEPS` steps or
   :data:`MIN_PROBE_SECONDS`), or a machine whose load average is :data:`SATURATED` times its
   cores: the cores the 1-minute load average leaves free.
7. Otherwise measured: the same unit of work (training: forward and backward of the run's
   first batch, thrown away; eval/score: the first windows of the real work) is timed at each
   candidate count, in alternating order (:class:`Tuner`), and the fewest threads whose median
   is within :data:`MARGIN` of the fastest win: fewer threads lose least when another process
   starts later, and cost at most that margin now.

Candidates (:func:`candidates`): every core this process may use (divided among the processes
of a ``torchrun`` on this machine), the cores the load average leaves free, half the cores, and 1.

Determinism: the count changes the order of floating-point sums in some kernels, so two runs
with the same ``--seed`` give the same weights only at the same count. The count is printed
at start, stored in the checkpoint (``train.threads``) and ``metrics.jsonl``; ``--resume`` reuses
it, and ``--threads N`` repeats a run exactly, on any machine torch computes alike. The probe
also checks whether the candidates round alike on this model (:attr:`ThreadChoice.same_rounding`);
when they do, the count cannot change the weights here.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from charnn.hardware import physical_cores

MARGIN = 0.05  # fewer threads win when their median is within 5 % of the fastest
ROUNDS = 3  # timed passes per candidate, after one untimed warm-up pass each
MIN_PROBE_STEPS = 300  # shorter step-bounded runs are not measured: 8 passes would cost > 3 %
MIN_PROBE_SECONDS = 30.0  # shorter timed runs neither
MAX_CANDIDATES = 4
SATURATED = 2.0  # load average / cores beyond which nothing is measured (see saturated())
DROP = 3.0  # a count this many times slower than another is not timed again

# How a count was chosen (ThreadChoice.how).
PINNED, RESUMED, ENVIRONMENT, DEVICE, SINGLE, LOAD, MEASURED = (
    "--threads",
    "resumed",
    "OMP_NUM_THREADS",
    "device",
    "one core",
    "load average",
    "measured",
)
HOWS = (PINNED, RESUMED, ENVIRONMENT, DEVICE, SINGLE, LOAD, MEASURED)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a command computes with, and how it was chosen (stored with a run)."""

    count: int | None  # threads torch uses; None: left to torch (a GPU does the work)
    how: str  # one of HOWS
    cores: int  # physical cores this process may use
    load: float | None = None  # 1-minute load average when chosen (None: not available)
    seconds: dict[int, float] = field(default_factory=dict)  # candidate -> median seconds per pass
    same_rounding: bool | None = None  # measured: did every candidate give bit-identical results?

    def describe(self) -> str:
        """One phrase for the start-up line, e.g. ``threads 2 of 2 cores, measured (2: 0.12 s,
        1: 0.21 s per pass; load 0.4); 1 and 2 round alike here``."""
        if self.count is None:
            return f"CPU threads left to torch ({self.how})"
        load = f"load {self.load:.1f}" if self.load is not None else "no load average"
        if self.how == MEASURED:
            times = ", ".join(f"{n}: {s:.3g} s" for n, s in sorted(self.seconds.items(), reverse=True))
            text = f"threads {self.count} of {self.cores} cores, measured ({times} per pass; {load})"
            if self.same_rounding is True:
                counts = " and ".join(str(n) for n in sorted(self.seconds))
                return text + f"; {counts} threads round alike here"
            return text + f"; --threads {self.count} repeats a run exactly"
        if self.how == LOAD:
            return f"threads {self.count} of {self.cores} cores, by the {load} (no time to measure)"
        return f"threads {self.count} ({self.how})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "how": self.how,
            "cores": self.cores,
            "load": self.load,
            "seconds": {str(n): s for n, s in sorted(self.seconds.items())},
            "same_rounding": self.same_rounding,
        }


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def processes_here(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this job on this machine: ``torchrun``'s ``LOCAL_WORLD_SIZE``, else 1."""
    env = os.environ if environ is None else environ
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def free_cores(cores: int, load: float | None, processes: int = 1) -> int:
    """This process's share of the cores the load average leaves free (all of them without one)."""
    top = max(1, cores // processes)
    if load is None:
        return top
    return max(1, min(top, round((cores - load) / processes)))


def candidates(cores: int, load: float | None, processes: int = 1) -> list[int]:
    """Counts worth timing, most first: all of this process's cores, those the load leaves
    free, half, and one (at most :data:`MAX_CANDIDATES`)."""
    top = max(1, cores // processes)
    found = sorted({top, free_cores(cores, load, processes), max(1, top // 2), 1}, reverse=True)
    if len(found) > MAX_CANDIDATES:  # keep the ends and the load's guess
        found = sorted({top, free_cores(cores, load, processes), 1}, reverse=True)
    return found


def decide(seconds: Mapping[int, float], margin: float = MARGIN) -> int:
    """The fewest threads whose median seconds per pass is within ``margin`` of the fastest."""
    if not seconds:
        raise ValueError("nothing was timed")
    best = min(seconds.values())
    return min(n for n, s in seconds.items() if s <= best * (1 + margin))


class Tuner:
    """Times one unit of work per call at each candidate count, then settles on :func:`decide`'s.

    The schedule: one warm-up pass per candidate, fewest threads first (the very first pass
    carries one-time costs: allocations, kernel set-up), then ``rounds`` timed passes each, the
    order reversed every round so a machine growing busier or quieter during the probe favours
    no count. A count whose best pass is :data:`DROP` times slower than another's best is dropped
    at once (warm-ups count here; the very first pass only with a second): under heavy load a spinning thread
    team can be 40x slower, and each pass at it would cost that much. ``next_count()`` gives the
    count for the next pass; ``record()`` its seconds, units of work (compared per unit) and an
    optional fingerprint of its result (to see whether the counts round alike). Torch-free: the
    caller sets the threads and runs the work.
    """

    def __init__(self, counts: list[int], rounds: int = ROUNDS, margin: float = MARGIN) -> None:
        if not counts:
            raise ValueError("no candidate thread counts")
        self.counts, self.margin = sorted(set(counts), reverse=True), margin
        self.schedule = self.counts[::-1]  # warm-up, fewest threads first
        for r in range(rounds):
            self.schedule += self.counts if r % 2 == 0 else self.counts[::-1]
        self.timed: dict[int, list[float]] = {n: [] for n in self.counts}
        self.best: dict[int, float] = {}  # fastest pass per unit so far, warm-ups included
        self.passes: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.prints: dict[int, Any] = {}
        self.position = 0
        self.chosen: int | None = self.counts[0] if len(self.counts) == 1 else None
        self.compared = True  # False when stopped before any two counts were timed

    @property
    def settled(self) -> bool:
        return self.chosen is not None

    @property
    def warming(self) -> bool:
        """Whether the next pass is a warm-up: its time only drops hopeless counts, so the
        caller may make it short."""
        return self.chosen is None and self.position < len(self.counts)

    def next_count(self) -> int:
        if self.chosen is not None:
            return self.chosen
        return self.schedule[self.position]

    def record(self, seconds: float, units: float = 1.0, fingerprint: Any = None) -> None:
        if self.chosen is not None:
            return
        count, per_unit = self.schedule[self.position], seconds / max(units, 1e-12)
        if self.position >= len(self.counts):  # past the warm-up
            self.timed[count].append(per_unit)
        self.best[count] = min(per_unit, self.best.get(count, per_unit))
        self.passes[count] = self.passes.get(count, 0) + 1
        if fingerprint is not None:
            self.prints.setdefault(count, fingerprint)
        self._drop_the_hopeless()
        self.position += 1
        while self.position < len(self.schedule) and self.schedule[self.position] in self.dropped:
            self.position += 1
        if self.position == len(self.schedule) or len(self.dropped) == len(self.counts) - 1:
            self.stop()

    def _drop_the_hopeless(self) -> None:
        if len(self.best) < 2:
            return
        fastest = min(self.best.values())
        first = self.schedule[0]  # its first pass carried the one-time costs: judged after a second
        self.dropped |= {
            n for n, b in self.best.items() if b > DROP * fastest and (n != first or self.passes[n] > 1)
        }

    def stop(self, fallback: int | None = None) -> None:
        """Decide now, from what was timed: the medians, else the best passes when at least two
        counts have one, else ``fallback`` (default: the fewest threads, which cannot collapse)."""
        if self.chosen is not None:
            return
        medians = self.medians()
        if len(medians) >= 2 or (medians and len(self.dropped) == len(self.counts) - 1):
            self.chosen = decide(medians, self.margin)
        elif len(self.best) >= 2:
            self.chosen = min(self.best, key=lambda n: self.best[n])
        else:
            self.chosen = fallback if fallback is not None else min(self.counts)
            self.compared = False

    def medians(self) -> dict[int, float]:
        return {n: statistics.median(t) for n, t in self.timed.items() if t and n not in self.dropped}

    @property
    def same_rounding(self) -> bool | None:
        if len(self.counts) < 2 or len(self.prints) < len(self.counts):
            return None  # some count was never fingerprinted
        first = next(iter(self.prints.values()))
        return all(p == first for p in self.prints.values())


@dataclass(frozen=True)
class Situation:
    """What the policy looks at (gathered by :func:`situation`; tests build their own)."""

    cores: int
    load: float | None
    processes: int = 1
    environment_threads: int | None = None  # what OMP_NUM_THREADS made torch use, when set


def situation(torch_threads: Callable[[], int], environ: Mapping[str, str] | None = None) -> Situation:
    env = os.environ if environ is None else environ
    from_env = torch_threads() if env.get("OMP_NUM_THREADS", "").strip() else None
    return Situation(physical_cores(), load_average(), processes_here(env), from_env)


def choose(
    where: Situation,
    pinned: int | None,
    resumed: int | None = None,
    device: str = "cpu",
    long_enough: bool = True,
    measure: Callable[[Tuner], None] | None = None,
) -> ThreadChoice:
    """The thread count by the policy in the module docstring. ``measure`` runs the probe's
    passes through the tuner it is given (it sets torch's threads to ``next_count()``)."""

    def made(count: int | None, how: str, **measured: Any) -> ThreadChoice:
        return ThreadChoice(count, how, where.cores, where.load, **measured)

    if pinned is not None:
        return made(pinned, PINNED)
    if resumed is not None:
        return made(resumed, RESUMED)
    if where.environment_threads is not None:
        return made(where.environment_threads, ENVIRONMENT)
    if device != "cpu":
        return made(None, DEVICE)
    counts = candidates(where.cores, where.load, where.processes)
    guess = free_cores(where.cores, where.load, where.processes)
    if len(counts) == 1:
        return made(counts[0], SINGLE)
    if not long_enough or measure is None or saturated(where):
        return made(guess, LOAD)
    tuner = Tuner(counts)
    measure(tuner)
    tuner.stop(fallback=guess)
    if not tuner.compared:  # cut short (a slow machine, a short time limit): the load decides
        return made(guess, LOAD)
    seconds = tuner.medians() or {n: b for n, b in tuner.best.items() if n not in tuner.dropped}
    return made(tuner.chosen, MEASURED, seconds=seconds, same_rounding=tuner.same_rounding)


def saturated(where: Situation) -> bool:
    """Whether the load average is so far above the cores (:data:`SATURATED` times) that a count
    above the free cores can only collapse: then measuring it would cost a slow pass for nothing."""
    return where.load is not None and where.load >= SATURATED * where.cores


def worth_measuring(steps: int | None, seconds: float | None) -> bool:
    """Whether a run is long enough for the probe (~8 passes) to cost under ~3 % of it: neither
    its step limit nor its time limit (the first reached ends it) is short."""
    return not (
        (steps is not None and steps < MIN_PROBE_STEPS)
        or (seconds is not None and seconds < MIN_PROBE_SECONDS)
    )


class Pace:
    """Runs eval/score work one window at a time: each at the tuner's count while it measures
    (the windows are the real work, so nothing is thrown away), then at the one it chose; and
    reports progress. Torch-free: ``set_threads`` is torch's setter, ``progress`` a console bar."""

    def __init__(
        self,
        tuner: Tuner | None = None,
        set_threads: Callable[[int], None] | None = None,
        progress: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tuner, self.set_threads, self.progress, self.clock = tuner, set_threads, progress, clock
        self.current: int | None = None

    def begin(self, total: int) -> None:
        """The work ahead, in the units :meth:`window` will be given."""
        if self.progress is not None:
            self.progress.start(total)

    @contextmanager
    def window(self, units: int) -> Iterator[None]:
        tuner = self.tuner
        measuring = tuner is not None and not tuner.settled
        if tuner is not None:
            self._use(tuner.next_count())
        start = self.clock()
        yield
        if measuring and tuner is not None:
            tuner.record(self.clock() - start, units)
            if tuner.settled:
                self._use(tuner.next_count(), force=True)
        if self.progress is not None:
            self.progress.advance(units)

    def _use(self, count: int, force: bool = False) -> None:
        if (count != self.current or force) and self.set_threads is not None:
            self.set_threads(count)
            if self.progress is not None:
                self.progress.note = f"{count} thread{'s' if count > 1 else ''}" + (
                    "" if self.tuner is None or self.tuner.settled else " (measuring)"
                )
        self.current = count


NO_PACE = Pace()


class PacedStepper:
    """A :class:`~charnn.stepper.Stepper` whose scoring windows (``target_logprobs``, what
    ``eval`` and ``score`` run) go through a :class:`Pace`: threads and progress."""

    def __init__(self, stepper: Any, pace: Pace) -> None:
        self.stepper, self.pace = stepper, pace

    @property
    def vocab_size(self) -> int:
        return int(self.stepper.vocab_size)

    def initial_state(self, n: int) -> Any:
        return self.stepper.initial_state(n)

    def step(self, ids: Any, state: Any) -> Any:
        return self.stepper.step(ids, state)

    def prime(self, ids: Any, state: Any = None) -> Any:
        return self.stepper.prime(ids, state)

    def forward(self, ids: Any, state: Any = None) -> Any:
        return self.stepper.forward(ids, state)

    def target_logprobs(self, ids: Any, targets: Any, state: Any = None) -> Any:
        with self.pace.window(int(getattr(ids, "size", 1))):
            return self.stepper.target_logprobs(ids, targets, state)

    def reorder(self, state: Any, index: Any) -> Any:
        return self.stepper.reorder(state, index)


def paced(stepper: Any, pace: Pace) -> Any:
    """``stepper`` run through ``pace``, or itself when there is nothing to pace."""
    return stepper if pace is NO_PACE else PacedStepper(stepper, pace)

"""Generate the arrival traces in bench/traces/ for `agentpool simulate`, from a seed.

    python bench/make_traces.py [--seed 7] [--out bench/traces]

Each trace is CSV `arrival_seconds,service_seconds`. Service times are log-normal, the shape
of agent tasks that chain model calls: median 15 s clipped at 240 s for steady, bursty and
diurnal; the long-run traces (longrun, heavytail, mixed) have runs of minutes, up to 600 s
(the pool's default taskTimeoutSeconds); ratelimited has LLM calls (median 20 s) arriving
faster than a 120/min quota in bursts. Arrivals are Poisson processes; the varying rates are
drawn by thinning.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from pathlib import Path

HOUR = 3600.0


def lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    return min(high, max(low, rng.lognormvariate(math.log(median), sigma)))


def service_time(rng: random.Random) -> float:
    return lognormal(rng, 15.0, 0.6, 1.0, 240.0)


def long_service(rng: random.Random) -> float:
    """Agent runs of tens of seconds with a tail of minutes: median 45 s, 2-600 s."""
    return lognormal(rng, 45.0, 1.0, 2.0, 600.0)


def heavy_service(rng: random.Random) -> float:
    """A heavier tail: median 60 s, one run in ten beyond about 4 minutes, up to 10 minutes."""
    return lognormal(rng, 60.0, 1.2, 5.0, 600.0)


def mixed_service(rng: random.Random) -> float:
    """Four short tasks (median 8 s) for one long run (median 3 minutes, up to 10)."""
    if rng.random() < 0.8:
        return lognormal(rng, 8.0, 0.5, 1.0, 60.0)
    return lognormal(rng, 180.0, 0.6, 30.0, 600.0)


def poisson(
    rng: random.Random, rate: Callable[[float], float], peak: float, end: float
) -> list[float]:
    """Arrival times of a Poisson process with time-varying `rate` (at most `peak`)."""
    times: list[float] = []
    now = 0.0
    while True:
        now += rng.expovariate(peak)
        if now >= end:
            return times
        if rng.random() * peak < rate(now):
            times.append(now)


def burst(rng: random.Random, start: float, count: int, spread: float) -> list[float]:
    return [start + rng.uniform(0.0, spread) for _ in range(count)]


def steady(rng: random.Random) -> list[float]:
    """One hour at 0.2 tasks/s: about 3.5 tasks in flight, one pod's worth."""
    return poisson(rng, lambda _: 0.2, 0.2, HOUR)


def bursty(rng: random.Random) -> list[float]:
    """A steady 0.1 tasks/s for an hour with five bursts of 80 tasks landing within 20 s."""
    arrivals = poisson(rng, lambda _: 0.1, 0.1, HOUR)
    for index in range(5):
        arrivals += burst(rng, 300.0 + index * 660.0 + rng.uniform(0.0, 120.0), 80, 20.0)
    return arrivals


def diurnal(rng: random.Random) -> list[float]:
    """A day compressed into two hours (quiet night, busy noon) with one spike of 150 tasks."""
    day = 2 * HOUR

    def rate(t: float) -> float:
        return 0.02 + 0.4 * (1 - math.cos(2 * math.pi * t / day)) / 2

    return poisson(rng, rate, 0.42, day) + burst(rng, 0.7 * day, 150, 30.0)


def longrun(rng: random.Random) -> list[float]:
    """A light background (0.02 tasks/s for 80 minutes) and four bursts of 150 tasks, each
    landing within a minute, 20 minutes apart."""
    arrivals = poisson(rng, lambda _: 0.02, 0.02, 80 * 60.0)
    for index in range(4):
        arrivals += burst(rng, 240.0 + index * 1200.0 + rng.uniform(0.0, 120.0), 150, 60.0)
    return arrivals


def heavytail(rng: random.Random) -> list[float]:
    """0.03 tasks/s for 90 minutes and three bursts of 100 tasks within two minutes."""
    arrivals = poisson(rng, lambda _: 0.03, 0.03, 90 * 60.0)
    for index in range(3):
        arrivals += burst(rng, 300.0 + index * 1800.0 + rng.uniform(0.0, 300.0), 100, 120.0)
    return arrivals


def mixed(rng: random.Random) -> list[float]:
    """0.15 tasks/s for an hour and four bursts of 120 tasks within 30 s."""
    arrivals = poisson(rng, lambda _: 0.15, 0.15, HOUR)
    for index in range(4):
        arrivals += burst(rng, 240.0 + index * 840.0 + rng.uniform(0.0, 120.0), 120, 30.0)
    return arrivals


def llm_service(rng: random.Random) -> float:
    """One model call and the work around it: median 20 s, 5-120 s."""
    return lognormal(rng, 20.0, 0.5, 5.0, 120.0)


def ratelimited(rng: random.Random) -> list[float]:
    """For a pool behind an LLM quota of 120 calls/min (one per task): 0.6 tasks/s for 40
    minutes (30 % of the quota) and three bursts of 600 tasks within a minute, each five
    minutes of the quota's work."""
    arrivals = poisson(rng, lambda _: 0.6, 0.6, 40 * 60.0)
    for index in range(3):
        arrivals += burst(rng, 180.0 + index * 780.0 + rng.uniform(0.0, 60.0), 600, 60.0)
    return arrivals


Arrivals = Callable[[random.Random], list[float]]
Service = Callable[[random.Random], float]
TRACES: dict[str, tuple[Arrivals, Service]] = {
    "steady": (steady, service_time),
    "bursty": (bursty, service_time),
    "diurnal": (diurnal, service_time),
    "longrun": (longrun, long_service),
    "heavytail": (heavytail, heavy_service),
    "mixed": (mixed, mixed_service),
    "ratelimited": (ratelimited, llm_service),
}


def write_trace(path: Path, name: str, seed: int) -> int:
    rng = random.Random(f"{seed}:{name}")
    make_arrivals, service = TRACES[name]
    arrivals = sorted(make_arrivals(rng))
    lines = [
        f"# {name}: generated by bench/make_traces.py --seed {seed}",
        "arrival_seconds,service_seconds",
        *(f"{arrival:.3f},{service(rng):.3f}" for arrival in arrivals),
    ]
    path.write_text("\n".join(lines) + "\n")
    return len(arrivals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "traces")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in TRACES:
        path = args.out / f"{name}.csv"
        print(f"{path}: {write_trace(path, name, args.seed)} tasks")


if __name__ == "__main__":
    main()

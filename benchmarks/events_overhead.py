"""Task events on vs off: ``taskq bench e2e`` runs interleaved (on, off, on, off, ...) in one sitting.

    python benchmarks/events_overhead.py [--runs 3] [-n 20000]

Uses the Kafka and Redis of ``TASKQ_BROKER_URL`` / ``TASKQ_RESULT_BACKEND`` (``scripts/services.py
start`` writes them to ``.cache/run/services.env``). Prints each run and the medians' ratio
(events on / events off) for e2e and steady throughput and worker CPU per task.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

KEYS = ("tasks_per_s", "steady_tasks_per_s", "cpu_ms_per_task")


def one_run(events: bool, tasks: int) -> dict[str, float]:
    env = {**os.environ, "TASKQ_EVENTS": "true" if events else "false"}
    out = subprocess.run([sys.executable, "-m", "taskq.cli", "bench", "e2e", "--runs", "1", "-n", str(tasks), "--json"],
                         env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    result = report["median"] if "median" in report else report["results"][0] if "results" in report else report
    return {k: float(result[k]) for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("-n", "--tasks", type=int, default=20000)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(args.runs):
        for events in (True, False) if i % 2 == 0 else (False, True):
            r = one_run(events, args.tasks)
            runs[events].append(r)
            print(f"run {i + 1} events={'on ' if events else 'off'} " + " ".join(f"{k}={r[k]:.3f}" for k in KEYS),
                  flush=True)
    for k in KEYS:
        on = statistics.median(r[k] for r in runs[True])
        off = statistics.median(r[k] for r in runs[False])
        print(f"median {k}: events on {on:.3f}, off {off:.3f}, on/off {on / off:.3f}")


if __name__ == "__main__":
    main()

"""Spot across zones: the multi-zone policy's cost over the best single zone in hindsight.

Replays the zones of one folder of the shared spot traces at once (``--multi-zone``) with
the default policy and the ``priority`` workload, and, in the same run, each zone alone
with the same workload and policy. Prints cost / best single zone (goal <= 1.0, and
<= 0.9 where that zone ran under 90 % of its work on spot), cost / the multi-zone lower
bound (goal <= 1.15) and deadlines met (goal 1.0).

Usage: python -m bench.multi_zone [--traces ../shared/data/spot-traces/availability/
16-node/aws-08-27-2023] [--seed 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from inferbatch.simulate.multizone import run_multi_zone
from inferbatch.simulate.traces import load_trace, trace_files
from inferbatch.simulate.workload import preset

DEFAULT = Path("../shared/data/spot-traces/availability/16-node/aws-08-27-2023")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=0)
    args = parser.parse_args()
    traces = [load_trace(path, name) for path, name in trace_files([args.traces])]
    [report] = run_multi_zone(traces, ["default"], preset("priority"), args.seed, jobs=args.jobs)
    goal = 0.9 if report.best_single_zone_spot_share < 0.9 else 1.0
    print(f"zones: {', '.join(report.zones)}")
    print(f"deadlines met: {report.deadline_met_fraction:.3f} (goal 1.000)")
    print(
        f"cost / best single zone ({report.best_single_zone}, spot share "
        f"{report.best_single_zone_spot_share:.3f}): {report.cost_vs_best_single_zone:.3f} "
        f"(goal <= {goal})"
    )
    print(f"cost / multi-zone lower bound: {report.cost_vs_lower_bound:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()

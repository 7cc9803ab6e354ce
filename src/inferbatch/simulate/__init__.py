"""The SLA simulator: replays spot availability traces against a workload of batches and
runs the scheduler's own policy code (``inferbatch.policy``) on it.

- ``traces``: the trace file format and trace -> spot workers over time;
- ``workload``: presets, the workload file format, seeded batch generation;
- ``engine``: the event simulation of queue, workers, spot interruptions and ticks;
- ``report``: metrics and the omniscient lower bounds on cost (one zone, several zones);
- ``multizone``: several traces at once as spot zones, against each zone alone;
- ``command``: ``run_simulation``, behind ``inferbatch simulate``.
"""

from inferbatch.simulate.command import run_simulation

__all__ = ["run_simulation"]

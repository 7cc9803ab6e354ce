"""Location sets: every distinct restriction a queued request has carried.

``requests.locations`` holds a batch's allowed locations (see :mod:`inferbatch.residency`);
the claim of a worker with a location reads this table to find the sets that allow it,
then the head of each in ``requests_queue_restricted``. The table grows with the distinct
restrictions ever used (a handful), not with the work.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferbatch.db.types import Conn

NO_LOCATION = "none"
"""The ``location`` label of workers that declared none."""
DESIRED_SPOT_BY_LOCATION = "spot_workers_desired_by_location"
"""Published state (``scheduler_state``), written by a policy that plans per location: the
autoscaler's target for spot workers, ``{location: n}``."""
DESIRED_DEDICATED_BY_LOCATION = "dedicated_workers_desired_by_location"
"""The same for dedicated workers."""
SPOT_LOCATIONS = "spot_locations"
"""Published state: what the escalate duty believes of each spot location, ``{location:
{capacity, serving, availability, mean_lifetime_s}}`` (``scheduler.placement``)."""

REGISTER = """
INSERT INTO location_sets (locations) VALUES (%(locations)s) ON CONFLICT DO NOTHING
"""


async def register(conn: Conn, locations: Sequence[str]) -> None:
    """Record a canonical location set (sorted, distinct) before requests carry it."""
    await conn.execute(REGISTER, {"locations": list(locations)})


async def all_sets(conn: Conn) -> list[tuple[str, ...]]:
    """Every location set recorded, in no particular order."""
    cur = await conn.execute("SELECT locations FROM location_sets")
    return [tuple(r["locations"]) for r in await cur.fetchall()]

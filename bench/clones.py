"""Benchmark servers of many household submissions, for bench/sync_bench.py and
bench/reliability.py: a pool of generated submissions cloned with new ids up to the size
wanted (generating a million one by one would take longer than the benchmark itself).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kobo.generate import device_id  # noqa: E402

POOL = 2000  # distinct generated submissions, cloned with new ids up to the size wanted
FIRST_ID, ID_STEP = 1000, 3


def _scattered(number: int) -> int:
    """A distinct 128-bit number for each number (odd multiplier, modulo 2**128), spread
    over the whole range as ODK Collect's random uuids are: uuids that grow with the
    clone's index let DuckDB skip most of raw when it looks submissions up by uuid, which
    a real warehouse never allows."""
    return number * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128


def cloned_server(size: int, seed: int = 2026, pool: int = POOL, uuid_offset: int = 0):
    """A seeded server (not started) holding ``size`` household submissions: clones of
    ``pool`` generated ones (seeded with ``seed``), each with its own ``_id`` (from FIRST_ID,
    every ID_STEP), uuid (from ``uuid_offset``), household id, and beyond the first pool a
    GPS point moved to its round's place on a grid around the template. Returns the kobo.seed.SeededServer."""
    from forms.build import project_form
    from kobo.seed import seeded_server

    seeded = seeded_server([project_form("household_survey")], pool, seed=seed)
    asset = seeded.assets["household_survey"]
    templates = asset.submissions
    clones = []
    for i in range(size):
        doc = dict(templates[i % len(templates)])
        instance = str(uuid.UUID(int=_scattered((i + 1) * 7919 + uuid_offset), version=4))
        doc.update({"_id": FIRST_ID + i * ID_STEP, "_uuid": instance, "meta/instanceID": f"uuid:{instance}",
                    "meta/rootUuid": f"uuid:{instance}", "_attachments": []})
        # Clones are made distinct where the duplicate checks look (household id, GPS),
        # as real households are: otherwise every clone is a true duplicate of its template.
        if "identification/household_id" in doc:
            letters = "".join(chr(65 + (i // 10000 // 26 ** k) % 26) for k in range(3))
            doc["identification/household_id"] = f"{letters}-{i % 10000:04d}"
        if "location" in doc and i >= len(templates):
            lat, lon, *rest = doc["location"].split()
            north, east = _grid_offset(i // len(templates))
            doc["location"] = " ".join([f"{float(lat) + north:.6f}", f"{float(lon) + east:.6f}", *rest])
        # Each round of clones was collected a week earlier: otherwise every enumerator would
        # send 50 times a day's work on the same day (and too_many_per_day flag them all).
        round_number = i // len(templates)
        _shift_dates(doc, dt.timedelta(days=-7 * round_number))
        _assign_team(doc, round_number % TEAMS)
        clones.append(doc)
    asset.submissions = clones
    asset.__post_init__()
    seeded.server.add_asset(asset)  # the server's own id counter follows the clones
    return seeded


# Each round of clones is placed on a grid around its template, GRID_STEP degrees (about
# 22 m) apart: further apart than the near-duplicate check looks, and within about 300 m
# of the template, as a village's households are. (A shift growing with the round spread
# a village over 40 km at 1,000,000 submissions, and flagged most of them as far from
# their village.) The grid has GRID x GRID places: rounds beyond it share places.
GRID, GRID_STEP = 25, 0.0002


def _grid_offset(round_number: int) -> tuple[float, float]:
    """(north, east) in degrees of a round's place on the grid; round 0 is the template's own."""
    def centred(place: int) -> float:
        return ((place + GRID // 2) % GRID - GRID // 2) * GRID_STEP

    return centred(round_number % GRID), centred(round_number // GRID % GRID)


# The pool spans 81 days, so some 12 rounds a week apart are in the field on any day: each
# of them is given its own team of enumerators (the pool's 12 names, suffixed), or the
# pool's 12 enumerators would each send some 25 forms a day and too_many_per_day would
# flag 40% of the submissions.
TEAMS = 12


def _assign_team(doc: dict, team: int) -> None:
    """The round's enumerators: the pool's names with the team's suffix (team 0: the pool's own)."""
    if not team:
        return
    for key in ("_submitted_by", "username"):
        if isinstance(doc.get(key), str):
            doc[key] = f"{doc[key]}_t{team:02d}"
    if isinstance(doc.get("username"), str) and "deviceid" in doc:
        doc["deviceid"] = device_id(doc["username"])


def _shift_dates(doc: dict, by: dt.timedelta) -> None:
    if not by:
        return
    for key in ("start", "end", "_submission_time"):
        if isinstance(doc.get(key), str):
            moved = dt.datetime.fromisoformat(doc[key]) + by
            doc[key] = moved.isoformat(timespec="milliseconds") if key != "_submission_time" else \
                moved.isoformat(timespec="seconds")
    if isinstance(doc.get("today"), str):
        doc["today"] = (dt.date.fromisoformat(doc["today"]) + by).isoformat()


def serve_until_stdin_closes(seeded, **extra) -> None:
    """Starts the server, prints how to reach it as one JSON line (with ``extra``), and
    stays up until the driver closes this process's stdin."""
    asset = seeded.assets["household_survey"]
    # The server keeps each document's JSON once made: made now, before any method runs,
    # so that each is measured against the same server. (Made on first request, they
    # were paid for by the first method alone, the ceiling: 5.1 s for 100,000 cold, 2.5 s
    # warm, which made every "vs ceiling" ratio printed until then about twice too high.)
    for document in asset.submissions:
        asset.encoded(document)
    seeded.server.start()
    print(json.dumps({"url": seeded.server.url, "token": seeded.token, "asset": asset.uid, **extra}), flush=True)
    sys.stdin.read()
    seeded.server.stop()

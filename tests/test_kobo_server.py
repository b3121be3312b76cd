"""The local KoboToolbox-compatible server behaves as ../shared/kobo-api.md records,
over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json

import requests

from kobo.seed import SeededServer


def _get(seeded: SeededServer, path: str, token: str | None = "valid", **params) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Token {seeded.token if token == 'valid' else token}"}
    return requests.get(seeded.server.url + path, headers=headers, params=params, timeout=10)


def _data(seeded: SeededServer) -> str:
    return f"/api/v2/assets/{seeded.assets['household_survey'].uid}/data/"


def test_default_limit_is_100_and_limit_is_capped_silently_at_1000(household) -> None:
    from kobo.seed import seeded_server

    seeded = seeded_server([household], 1200, seed=1)
    with seeded.server:
        page = _get(seeded, _data(seeded)).json()
        assert page["count"] == 1200 and len(page["results"]) == 100
        assert "limit=100" in page["next"] and "start=100" in page["next"]
        big = _get(seeded, _data(seeded), limit=5000).json()
        assert len(big["results"]) == 1000
        assert "limit=1000" in big["next"] and "start=1000" in big["next"]
        last = _get(seeded, _data(seeded), limit=1000, start=1000).json()
        assert len(last["results"]) == 200 and last["next"] is None
        assert "start" not in last["previous"]


def test_old_style_server_defaults_and_caps_at_30000(household) -> None:
    from kobo.seed import seeded_server

    seeded = seeded_server([household], 150, seed=1, new_style=False)
    with seeded.server:
        page = _get(seeded, _data(seeded)).json()
        assert len(page["results"]) == 150 and page["next"] is None


def test_query_on_id_and_submission_time_sort_and_fields(seeded: SeededServer) -> None:
    everything = _get(seeded, _data(seeded), limit=1000).json()["results"]
    ids = [s["_id"] for s in everything]
    assert ids == sorted(ids) and len(ids) == 250
    after = _get(seeded, _data(seeded), limit=1000, query=json.dumps({"_id": {"$gt": ids[99]}})).json()
    assert after["count"] == 150 and after["results"][0]["_id"] == ids[100]
    times = sorted(s["_submission_time"] for s in everything)
    since = _get(seeded, _data(seeded), limit=1000, query=json.dumps({"_submission_time": {"$gte": times[200]}})).json()
    assert since["count"] == sum(1 for t in times if t >= times[200])
    descending = _get(seeded, _data(seeded), limit=5, sort=json.dumps({"_id": -1})).json()["results"]
    assert [s["_id"] for s in descending] == ids[::-1][:5]
    projected = _get(seeded, _data(seeded), limit=3, fields=json.dumps(["_id"])).json()["results"]
    assert set(projected[0]) == {"_id", "_uuid", "meta/rootUuid", "_validation_status"}
    unknown_operator = _get(seeded, _data(seeded), query=json.dumps({"_id": {"$eq": ids[0]}})).json()
    assert unknown_operator["count"] == 0  # kpi treats unknown operators as field names
    # _id ranges (a fast path in the server) select what the same bounds select as any query.
    for bounds in ({"$gt": ids[10], "$lte": ids[40]}, {"$gte": ids[10], "$lt": ids[40]}, {"$lt": ids[3]},
                   {"$gt": ids[40], "$lt": ids[10]}, {"$gte": ids[-1] + 1}):
        ranged = _get(seeded, _data(seeded), limit=7, start=2, query=json.dumps({"_id": bounds})).json()
        general = _get(seeded, _data(seeded), limit=7, start=2,
                       query=json.dumps({"$and": [{"_id": bounds}, {"_id": {"$exists": True}}]})).json()
        assert ranged["count"] == general["count"] and ranged["results"] == general["results"]
    assert _get(seeded, _data(seeded), query=json.dumps({"_id": {"$gt": ids[10], "$lte": ids[40]}})).json()["count"] == 30


def test_documents_are_flat_strings_with_repeats_as_lists(seeded: SeededServer) -> None:
    results = _get(seeded, _data(seeded), limit=1000).json()["results"]
    answered = next(s for s in results if s.get("consent") == "yes")
    assert isinstance(answered["identification/household_size"], str)
    assert isinstance(answered["members"], list)
    assert all(k.startswith("members/") for member in answered["members"] for k in member)
    assert isinstance(answered["_id"], int) and not answered["_uuid"].startswith("uuid:")
    assert answered["meta/rootUuid"].startswith("uuid:")
    # Unanswered questions are omitted, never null.
    assert all(v is not None for s in results for k, v in s.items() if not k.startswith("_"))
    adults_only = [m for s in results for m in s.get("members", []) if int(m["members/member_age"]) > 16]
    assert adults_only and all("members/member_in_school" not in m for m in adults_only)


def test_error_shapes(seeded: SeededServer) -> None:
    bad = _get(seeded, _data(seeded), token="0" * 40)
    assert bad.status_code == 401 and bad.json() == {"detail": "Invalid token."}
    assert bad.headers["WWW-Authenticate"] == "Session"
    anonymous = _get(seeded, _data(seeded), token=None)
    assert anonymous.status_code == 404 and anonymous.json() == {"detail": "Not found."}
    missing = _get(seeded, "/api/v2/assets/aDoesNotExist000000000/data/")
    assert missing.status_code == 404 and missing.json() == {"detail": "No Asset matches the given query."}
    assert _get(seeded, _data(seeded), limit=0).json() == {"limit": "A positive integer is required"}
    assert _get(seeded, _data(seeded), start=-1).status_code == 400
    assert _get(seeded, _data(seeded), query="{not json").json() == {"query": "Value must be valid JSON."}
    assert _get(seeded, "/api/v1/data").status_code == 410


def test_asset_list_and_detail(seeded: SeededServer) -> None:
    listing = _get(seeded, "/api/v2/assets/", q="asset_type:survey AND _deployment_status:deployed").json()
    assert listing["count"] == 1
    item = listing["results"][0]
    assert "content" not in item and item["deployment__active"] is True
    detail = _get(seeded, f"/api/v2/assets/{item['uid']}/").json()
    assert detail["content"]["settings"]["form_id"] == "household_survey"
    assert detail["content"]["translations"] == ["Français (fr)", "English (en)"]
    assert _get(seeded, "/api/v2/assets/", token=None).json()["count"] == 0

"""The KoboToolbox client pages through everything at limit 1000 with keyset paging,
and maps errors to messages a data manager can act on."""

from __future__ import annotations

import json

import pytest
import requests

from kobo.client import KoboClient, _facts_by_duckdb, _facts_by_python, _page, read_page
from kobo.errors import ProjectNotFound, TokenRejected
from kobo.seed import seeded_server


def test_client_gets_every_submission_where_a_naive_client_gets_100(household) -> None:
    seeded = seeded_server([household], 2300, seed=2)
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server:
        naive = requests.get(f"{server.url}/api/v2/assets/{uid}/data/",
                             headers={"Authorization": f"Token {seeded.token}"}, timeout=10).json()
        assert len(naive["results"]) == 100
        before = server.requests_served
        with KoboClient(server.url, seeded.token) as client:
            pages = list(client.iter_pages(uid))
        assert [len(p.results) for p in pages] == [1000, 1000, 300]
        assert server.requests_served - before == 3
        ids = [s["_id"] for p in pages for s in p.results]
        assert ids == sorted(ids) and len(set(ids)) == 2300
        assert pages[-1].last_id == ids[-1]


def test_incremental_pull_starts_after_the_watermark(seeded) -> None:
    uid = seeded.assets["household_survey"].uid
    with KoboClient(seeded.server.url, seeded.token, page_size=100) as client:
        everything = [s["_id"] for p in client.iter_pages(uid) for s in p.results]
        later = [s["_id"] for p in client.iter_pages(uid, after_id=everything[119]) for s in p.results]
    assert later == everything[120:]


def test_token_rejected_and_never_shown(seeded) -> None:
    secret = "f" * 40
    with KoboClient(seeded.server.url, secret) as client:
        with pytest.raises(TokenRejected) as caught:
            client.get_asset(seeded.assets["household_survey"].uid)
        assert secret not in repr(client)
    assert "rejected the token" in str(caught.value) and secret not in str(caught.value)


def test_unknown_project_is_reported_as_not_found(seeded) -> None:
    with KoboClient(seeded.server.url, seeded.token) as client:
        with pytest.raises(ProjectNotFound, match="project not found"):
            list(client.iter_pages("aNoSuchProject00000000"))


def test_validation_statuses_read_and_written_single_and_bulk(seeded) -> None:
    uid = seeded.assets["household_survey"].uid
    ids = [s["_id"] for s in seeded.assets["household_survey"].submissions[:5]]
    with KoboClient(seeded.server.url, seeded.token) as client:
        assert client.get_validation_status(uid, ids[0]) == {}
        status = client.set_validation_status(uid, ids[0], "validation_status_on_hold")
        assert status["uid"] == "validation_status_on_hold" and status["label"] == "On Hold"
        assert isinstance(status["timestamp"], int)
        assert client.set_validation_statuses(uid, ids[1:], "validation_status_approved") == 4
        assert client.get_validation_status(uid, ids[4])["label"] == "Approved"
        with pytest.raises(ValueError, match="unknown validation status"):
            client.set_validation_statuses(uid, ids, "validation_status_typo")


def test_errors_a_data_manager_can_act_on(seeded) -> None:
    from kobo.errors import ApiGone, NotDeployed

    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token) as client:
        with pytest.raises(ApiGone, match="410"):
            client.get_json("api/v1/data")
        asset.deployed = False
        try:
            with pytest.raises(NotDeployed, match="deploy it in KoboToolbox first"):
                list(client.iter_pages(asset.uid))
        finally:
            asset.deployed = True


def test_transient_failures_are_retried_and_terminal_ones_are_not(household) -> None:
    from kobo.errors import ServerUnavailable
    from kobo.server import FaultPlan

    seeded = seeded_server([household], 50, seed=3,
                           faults=FaultPlan(rate=1.0, kinds=("429",), retry_after=0, max_in_a_row=2, seed=1))
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server, KoboClient(server.url, seeded.token, backoff=0.01) as client:
        pages = list(client.iter_pages(uid))  # two 429s, then the answer
        assert sum(len(p.results) for p in pages) == 50
        assert server.faults_injected["429"] >= 2
        server.faults = None
        served = server.requests_served
        with pytest.raises(ProjectNotFound):
            client.get_asset("aNoSuchProject00000000")
        assert server.requests_served - served == 1  # a 404 is not retried
        server.faults = FaultPlan(rate=1.0, kinds=("500",), max_in_a_row=100, seed=1)
        with KoboClient(server.url, seeded.token, backoff=0.001, retries=2) as impatient:
            with pytest.raises(ServerUnavailable, match="gave up after 3 attempts"):
                impatient.get_asset(uid)


def test_base_url_with_a_path_prefix(household) -> None:
    from kobo.server import LocalKoboServer

    seeded = seeded_server([household], 20, seed=4)
    server = LocalKoboServer({seeded.token: "me"}, list(seeded.assets.values()), prefix="/kobo")
    with server, KoboClient(server.url, seeded.token) as client:
        assert server.url.endswith("/kobo")
        assert len(client.list_assets()) == 1
        assert sum(len(p.results) for p in client.iter_pages(seeded.assets["household_survey"].uid)) == 20


def test_a_page_is_read_alike_by_duckdb_and_by_python_whatever_its_size() -> None:
    results = [{"_id": i, "note": "x" * 4000} for i in range(1, 2001)]
    odd = [{"_id": "12a"}, 7, {"_id": 10**20}, {"_id": "2500"}, {"no_id": 1}]
    texts = [json.dumps({"count": 5000, "next": "http://k/?start=1", "previous": None, "results": results + odd}),
             json.dumps({"count": 3, "next": None, "results": results[:3] + odd}),
             json.dumps({"next": "", "results": []}), json.dumps({"results": "none"}), "[1, 2]"]
    texts = [text.encode() for text in texts]
    pages = [read_page(text) for text in texts]
    assert [(p.size, p.remaining, p.last_id, p.more) for p in pages[:3]] == [
        (2005, 5000, 2500, True), (8, 3, 2500, False), (0, 0, None, False)]
    assert pages[3:] == [None, None]
    assert _facts_by_duckdb(texts[0]) is None  # 8 MB: beyond the DuckDB reader's memory, so read by Python
    for text in texts[1:]:
        assert _page(text, _facts_by_duckdb(text)) == _page(text, _facts_by_python(text))
    with pytest.raises(ValueError):
        read_page(texts[1][:-10])
    with pytest.raises(ValueError):  # JSON is UTF-8
        read_page('{"results": [{"_id": 1, "nom": "Traoré"}]}'.encode("latin-1"))
    assert read_page('{"results": [{"_id": 1, "nom": "Traoré"}]}'.encode()).results == [{"_id": 1, "nom": "Traoré"}]

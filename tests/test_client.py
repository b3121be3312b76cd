"""The KoboToolbox client pages through everything at limit 1000 with keyset paging,
and maps errors to messages a data manager can act on."""

from __future__ import annotations

import pytest
import requests

from kobo.client import KoboClient
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

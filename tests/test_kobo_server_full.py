"""The local KoboToolbox server, complete (kobo-api.md §10): /token/, validation statuses,
deletes, edits, test-control endpoints, fault injection, old and new server behaviour
and attachments. Real HTTP on 127.0.0.1 with requests."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import requests

from forms.build import project_form
from kobo.seed import seeded_server
from kobo.server import FaultPlan, LocalKoboServer, ServedAsset

APPROVED, ON_HOLD = "validation_status_approved", "validation_status_on_hold"


@dataclass
class Kobo:
    """A seeded server over HTTP: the household survey (asset) and the training form (other)."""

    server: LocalKoboServer
    token: str
    asset: ServedAsset
    other: ServedAsset

    def request(self, method: str, path: str, token: str | None = "valid", **options: Any) -> requests.Response:
        headers = dict(options.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Token {self.token if token == 'valid' else token}"
        url = path if path.startswith("http") else self.server.url + path
        return requests.request(method, url, headers=headers, timeout=options.pop("timeout", 10), **options)

    def data(self, rest: str = "") -> str:
        return f"/api/v2/assets/{self.asset.uid}/data/{rest}"

    def control(self, rest: str = "") -> str:
        return f"/__terrain__/assets/{self.asset.uid}/submissions{rest}"

    def count(self, query: dict[str, Any] | None = None) -> int:
        params = {"query": json.dumps(query)} if query else {}
        return self.request("GET", self.data(), params=params).json()["count"]


@pytest.fixture
def kobo(household) -> Iterator[Kobo]:
    seeded = seeded_server([household, project_form("training_attendance")], 40, seed=11,
                           passwords={"terrain_demo": "s3cret", "newcomer": "hello"})
    with seeded.server:
        yield Kobo(seeded.server, seeded.token, seeded.assets["household_survey"],
                   seeded.assets["training_attendance"])


def _root(document: dict[str, Any]) -> str:
    return document["meta/rootUuid"].removeprefix("uuid:")


# -- /token/ (§1.2) ---------------------------------------------------------------------
def test_token_endpoint_answers_basic_auth_with_the_users_token(kobo: Kobo) -> None:
    url = kobo.server.url + "/token/?format=json"
    answer = requests.get(url, auth=("terrain_demo", "s3cret"), timeout=10)
    assert answer.status_code == 200 and answer.json() == {"token": kobo.token}
    # The token works for the API, and on /token/ itself (any authentication works there).
    assert kobo.request("GET", "/token/?format=json").json() == {"token": kobo.token}
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Authentication credentials were not provided."}
    wrong = requests.get(url, auth=("terrain_demo", "nope"), timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid username/password."}
    # A user without a token gets one created: POST says so with 201, GET then returns it.
    created = requests.post(url, auth=("newcomer", "hello"), timeout=10)
    assert created.status_code == 201 and re.fullmatch(r"[0-9a-f]{40}", created.json()["token"])
    assert requests.get(url, auth=("newcomer", "hello"), timeout=10).json() == created.json()
    assert kobo.request("GET", "/api/v2/assets/", token=created.json()["token"]).json()["count"] == 2
    # Basic auth is accepted on the API too.
    assert requests.get(kobo.server.url + kobo.data(), auth=("terrain_demo", "s3cret"), timeout=10).status_code == 200
    # DELETE removes the token; the next GET makes a new one.
    assert requests.delete(url, auth=("newcomer", "hello"), timeout=10).status_code == 204
    assert kobo.request("GET", "/api/v2/assets/", token=created.json()["token"]).status_code == 401
    assert requests.get(url, auth=("newcomer", "hello"), timeout=10).json() != created.json()


# -- validation statuses (§7) -------------------------------------------------------------
def test_single_validation_status_by_id_or_root_uuid(kobo: Kobo) -> None:
    first, second = kobo.asset.submissions[0], kobo.asset.submissions[1]
    assert kobo.request("GET", kobo.data(f"{first['_id']}/validation_status/")).json() == {}
    before = int(time.time())
    patched = kobo.request("PATCH", kobo.data(f"{first['_id']}/validation_status/"),
                           json={"validation_status.uid": APPROVED})
    assert patched.status_code == 200
    status = patched.json()
    assert status == {"timestamp": status["timestamp"], "uid": APPROVED, "by_whom": "terrain_demo",
                      "label": "Approved"}
    assert isinstance(status["timestamp"], int) and before <= status["timestamp"] <= time.time() + 1
    by_root = kobo.request("PATCH", kobo.data(f"{_root(second)}/validation_status/"),
                           json={"validation_status.uid": ON_HOLD})
    assert by_root.json()["label"] == "On Hold"
    assert kobo.request("GET", kobo.data(f"{_root(first)}/validation_status/")).json() == status
    # The document carries it, keeps its _uuid, and /data/ can query it.
    served = kobo.request("GET", kobo.data(f"{first['_id']}/")).json()
    assert served["_validation_status"] == status and served["_uuid"] == first["_uuid"]
    assert kobo.count({"_validation_status.uid": APPROVED}) == 1
    assert kobo.count({"_validation_status.uid": {"$in": [APPROVED, ON_HOLD]}}) == 2
    unknown = kobo.request("PATCH", kobo.data(f"{first['_id']}/validation_status/"),
                           json={"validation_status.uid": "validation_status_maybe"})
    assert unknown.status_code == 400
    assert unknown.json() == {"detail": "Invalid validation status: `validation_status_maybe`"}
    assert kobo.request("DELETE", kobo.data(f"{first['_id']}/validation_status/")).status_code == 204
    assert kobo.request("GET", kobo.data(f"{first['_id']}/validation_status/")).json() == {}
    assert kobo.request("GET", kobo.data("99999999/validation_status/")).json() == {"detail": "Not found."}
    assert kobo.request("GET", kobo.data(f"{first['_id']}/validation_status/"), token=None).status_code == 404


def test_bulk_validation_statuses_and_their_errors(kobo: Kobo) -> None:
    url = kobo.data("validation_statuses/")
    ids = [s["_id"] for s in kobo.asset.submissions[:3]]

    def bulk(payload: Any, method: str = "PATCH") -> requests.Response:
        return kobo.request(method, url, json={"payload": payload})

    answer = bulk({"submission_ids": ids, "validation_status.uid": ON_HOLD})
    assert answer.status_code == 200 and answer.json() == {"detail": "3 submissions have been updated"}
    assert kobo.count({"_validation_status.uid": ON_HOLD}) == 3
    # By query, and a payload sent as a JSON string.
    query = {"_id": {"$in": ids[:2]}}
    answer = bulk(json.dumps({"query": query, "validation_status.uid": APPROVED}))
    assert answer.json() == {"detail": "2 submissions have been updated"}
    assert kobo.count({"_validation_status.uid": APPROVED}) == 2
    # Everything, with confirm.
    assert bulk({"confirm": True, "validation_status.uid": APPROVED}).json() == {
        "detail": f"{len(kobo.asset.submissions)} submissions have been updated"}
    # kpi does not check the uid in bulk: an unknown one clears the statuses, and so does DELETE.
    assert bulk({"submission_ids": ids[:1], "validation_status.uid": "nonsense"}).status_code == 200
    assert kobo.request("GET", kobo.data(f"{ids[0]}/validation_status/")).json() == {}
    assert bulk({"submission_ids": ids[1:3], "validation_status.uid": APPROVED}, "DELETE").json() == {
        "detail": "2 submissions have been updated"}
    assert kobo.count({"_validation_status.uid": APPROVED}) == len(kobo.asset.submissions) - 3
    # kpi's 400s.
    assert bulk({"submission_ids": ids}).json() == {"payload": ["`validation_status.uid` is required"]}
    assert bulk({"validation_status.uid": APPROVED}).json() == {"payload": ["Confirmation is required"]}
    assert bulk({"submission_ids": ["one"], "validation_status.uid": APPROVED}).json() == {
        "payload": ["`submission_ids` must only contain integer values"]}
    assert bulk({"submission_ids": [], "validation_status.uid": APPROVED}).json() == {
        "payload": ["`submission_ids` must contain at least one value"]}
    foreign = bulk({"submission_ids": [ids[0], kobo.other.submissions[0]["_id"]], "validation_status.uid": APPROVED})
    assert foreign.status_code == 400 and foreign.json() == {"detail": "One or more submission ids are invalid"}
    assert kobo.request("PATCH", url, json={}).json() == {"payload": ["This field is required."]}


# -- reading one submission, deleting (§3.1, §3.7) ----------------------------------------------
def test_one_submission_by_id_root_uuid_or_uuid(kobo: Kobo) -> None:
    document = kobo.asset.submissions[5]
    for ident in (document["_id"], _root(document), document["_uuid"]):
        answer = kobo.request("GET", kobo.data(f"{ident}/"))
        assert answer.status_code == 200 and answer.json() == document
    assert kobo.request("GET", kobo.data(f"{kobo.other.submissions[0]['_id']}/")).json() == {"detail": "Not found."}
    assert kobo.request("GET", kobo.data(f"{document['_id']}/"), token=None).status_code == 404


def test_deletes_are_hard_single_and_bulk(kobo: Kobo) -> None:
    total = len(kobo.asset.submissions)
    ids = [s["_id"] for s in kobo.asset.submissions]
    assert kobo.request("DELETE", kobo.data(f"{ids[0]}/")).status_code == 204
    assert kobo.request("GET", kobo.data(f"{ids[0]}/")).status_code == 404
    gone = kobo.request("DELETE", kobo.data(f"{ids[0]}/"))
    assert gone.status_code == 404 and gone.json() == {"detail": "Not found."}
    url = kobo.data("bulk/")
    answer = kobo.request("DELETE", url, json={"payload": {"submission_ids": ids[1:4]}})
    assert answer.status_code == 200 and answer.json() == {"detail": "3 submissions have been deleted"}
    answer = kobo.request("DELETE", url, json={"payload": {"query": {"_id": {"$lte": ids[6]}}}})
    assert answer.json() == {"detail": "3 submissions have been deleted"}
    foreign_ids = [ids[10], kobo.other.submissions[0]["_id"]]
    foreign = kobo.request("DELETE", url, json={"payload": {"submission_ids": foreign_ids}})
    assert foreign.status_code == 400 and foreign.json() == {"detail": "One or more submission ids are invalid"}
    assert kobo.request("DELETE", url, json={"payload": {}}).json() == {"payload": ["Confirmation is required"]}
    assert kobo.count() == total - 7 and kobo.asset.get(ids[10]) is not None
    # No trace remains, and a pk is never reused.
    assert kobo.count({"_id": {"$lte": ids[6]}}) == 0
    highest = max(s["_id"] for a in (kobo.asset, kobo.other) for s in a.submissions)
    added = kobo.request("POST", kobo.control(), json=[{"consent": "no"}]).json()
    assert added[0]["_id"] == highest + 1
    kobo.request("DELETE", kobo.data(f"{added[0]['_id']}/"))
    assert kobo.request("POST", kobo.control(), json=[{"consent": "no"}]).json()[0]["_id"] == highest + 2
    assert kobo.request("DELETE", url, json={"payload": {"confirm": True}}).json() == {
        "detail": f"{total - 7 + 1} submissions have been deleted"}
    assert kobo.count() == 0 and len(kobo.other.submissions) == 40


# -- test control: adding and editing ------------------------------------------------------
def test_added_submissions_get_the_system_keys_of_a_real_server(kobo: Kobo) -> None:
    highest = max(s["_id"] for a in (kobo.asset, kobo.other) for s in a.submissions)
    answers = [{"consent": "no", "today": "2026-11-20"},
               {"consent": "yes", "location": "12.650000 -8.000000 350.0 5.0", "photo": "1790000000000.jpg",
                "members": [{"members/member_name": "Awa Diarra", "members/member_age": "31"}]}]
    answer = kobo.request("POST", kobo.control(), json=answers)
    assert answer.status_code == 201
    stored = answer.json()
    assert [s["_id"] for s in stored] == [highest + 1, highest + 2]
    other = kobo.request("POST", f"/__terrain__/assets/{kobo.other.uid}/submissions", json=[{"consent": "no"}]).json()
    assert other[0]["_id"] == highest + 3  # unique and increasing server-wide
    first, second = stored
    assert first["meta/instanceID"] == first["meta/rootUuid"] == f"uuid:{first['_uuid']}"
    assert first["__version__"] == kobo.asset.deployed_version_id and first["formhub/uuid"] == kobo.asset.formhub_uuid
    assert first["_xform_id_string"] == kobo.asset.uid and first["_status"] == "submitted_via_web"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first["_submission_time"])
    received = datetime.strptime(first["_submission_time"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - received).total_seconds()) < 60
    assert first["_validation_status"] == {} and first["_submitted_by"] == "terrain_demo"
    assert first["_attachments"] == [] and first["_geolocation"] == [None, None]
    assert second["_geolocation"] == [12.65, -8.0] and second["members"] == answers[1]["members"]
    assert [a["question_xpath"] for a in second["_attachments"]] == ["photo"]
    # They are served like any other, in _id order, and counted.
    assert kobo.request("GET", kobo.data(), params={"limit": 1000}).json()["results"][-2:] == stored
    # Generated ones come from the asset's form, with uuids no seeded submission has.
    generated = kobo.request("POST", kobo.control(), json={"generate": 5, "seed": 11}).json()
    assert len(generated) == 5
    assert {g["_uuid"] for g in generated}.isdisjoint(s["_uuid"] for s in kobo.asset.submissions[:40])
    assert all("identification/region" in g for g in generated if g.get("consent") == "yes")
    again = kobo.request("POST", kobo.control(), json={"generate": 5, "seed": 11}).json()
    assert {g["_uuid"] for g in again}.isdisjoint(g["_uuid"] for g in generated)
    assert kobo.count() == 40 + 2 + 10
    # Errors.
    assert kobo.request("POST", kobo.control(), token=None, json=[{}]).status_code == 401
    assert kobo.request("POST", "/__terrain__/assets/aNoSuchAsset0000000000/submissions", json=[{}]).status_code == 404
    assert kobo.request("POST", kobo.control(), json={"consent": "no"}).status_code == 400


def test_generated_submissions_are_deterministic(household) -> None:
    def generate() -> list[dict[str, Any]]:
        seeded = seeded_server([household], 3, seed=4)
        uid = seeded.assets["household_survey"].uid
        return [{k: v for k, v in s.items() if k not in ("_submission_time", "_attachments")}
                for s in seeded.server.generate_submissions(uid, 4, seed=9)]

    assert generate() == generate()


def test_an_edit_keeps_id_root_and_time_and_deprecates_the_previous_instance(kobo: Kobo) -> None:
    original = next(s for s in kobo.asset.submissions if s.get("consent") == "yes" and "photo" in s
                    and "water/water_point_id" in s)
    edited = kobo.request("PATCH", kobo.control(f"/{original['_id']}"),
                          json={"identification/head_age": "61", "water/water_point_id": None})
    assert edited.status_code == 200
    first = edited.json()
    assert (first["_id"], first["meta/rootUuid"], first["_submission_time"]) == (
        original["_id"], original["meta/rootUuid"], original["_submission_time"])
    assert first["_uuid"] != original["_uuid"] and first["meta/instanceID"] == f"uuid:{first['_uuid']}"
    assert first["meta/deprecatedID"] == original["meta/instanceID"]
    assert first["identification/head_age"] == "61" and "water/water_point_id" not in first
    assert first["__version__"] == kobo.asset.deployed_version_id
    # The unchanged photo keeps its attachment, which stays under the root uuid.
    assert first["_attachments"] == original["_attachments"]
    # /data/ serves the new version (the encoded cache was refreshed), by _id and by root uuid.
    assert kobo.request("GET", kobo.data(f"{_root(original)}/")).json() == first
    page = kobo.request("GET", kobo.data(), params={"query": json.dumps({"_id": original["_id"]})}).json()
    assert page["count"] == 1 and page["results"][0]["_uuid"] == first["_uuid"]
    # deprecatedID is only the previous instanceID, not the chain.
    second = kobo.request("PATCH", kobo.control(f"/{original['_id']}"), json={"photo": "1791111111111.jpg"}).json()
    assert second["meta/deprecatedID"] == first["meta/instanceID"]
    assert second["_attachments"][0]["uid"] != first["_attachments"][0]["uid"]
    assert second["_attachments"][0]["media_file_basename"] == "1791111111111.jpg"
    refused = kobo.request("PATCH", kobo.control(f"/{original['_id']}"), json={"_id": 1})
    assert refused.status_code == 400
    assert kobo.request("PATCH", kobo.control("/99999999"), json={"consent": "no"}).status_code == 404
    assert kobo.request("DELETE", kobo.control(f"/{original['_id']}")).status_code == 204
    assert kobo.request("GET", kobo.data(f"{original['_id']}/")).status_code == 404


def test_python_methods_mutate_in_order_and_refresh_the_cache(kobo: Kobo) -> None:
    server, uid = kobo.server, kobo.asset.uid
    assert len(kobo.request("GET", kobo.data(), params={"limit": 1000}).json()["results"]) == 40  # fills the cache
    added = server.add_submissions(uid, [{"consent": "no"}, {"consent": "no"}])
    victim = kobo.asset.submissions[3]
    edited = server.edit_submission(uid, victim["_id"], {"consent": "no"})
    server.delete_submission(uid, kobo.asset.submissions[0]["_id"])
    assert kobo.asset._ids == sorted(kobo.asset._ids) == [s["_id"] for s in kobo.asset.submissions]
    served = kobo.request("GET", kobo.data(), params={"limit": 1000}).json()["results"]
    assert served == kobo.asset.submissions and served[-2:] == added and edited in served
    assert len(served) == 41


# -- faults ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["500", "502", "429", "timeout", "truncated", "reset"])
def test_each_fault_kind_as_a_client_sees_it(kobo: Kobo, kind: str) -> None:
    kobo.server.faults = FaultPlan(rate=1.0, kinds=(kind,), timeout_seconds=1.0, retry_after=0)
    started = time.monotonic()
    try:
        answer: requests.Response | Exception = kobo.request("GET", kobo.data(), params={"limit": 1000}, timeout=5)
    except requests.RequestException as error:
        answer = error
    if kind in ("500", "502"):
        assert isinstance(answer, requests.Response) and answer.status_code == int(kind)
        assert answer.headers["Content-Type"].startswith("text/html")
    elif kind == "429":
        assert isinstance(answer, requests.Response) and answer.status_code == 429
        assert answer.headers["Retry-After"] == "0" and "throttled" in answer.json()["detail"]
    elif kind == "timeout":  # hangs, then closes without an answer
        assert isinstance(answer, requests.ConnectionError) and time.monotonic() - started >= 0.9
        with pytest.raises(requests.ReadTimeout):
            kobo.request("GET", kobo.data(), timeout=(5, 0.3))
    elif kind == "truncated":  # Content-Length promises more than arrives
        assert isinstance(answer, requests.exceptions.ChunkedEncodingError)
        assert "IncompleteRead" in str(answer)
    else:
        assert isinstance(answer, requests.ConnectionError) and "reset" in str(answer).lower()
    assert kobo.server.faults_injected[kind] >= 1
    # /__terrain__/ is never faulted, and reports the figures.
    report = kobo.request("GET", "/__terrain__/faults")
    assert report.status_code == 200 and report.json()["injected"][kind] == kobo.server.faults_injected[kind]
    assert kobo.request("POST", kobo.control(), json=[{"consent": "no"}]).status_code == 201


def test_faults_are_bounded_deterministic_and_set_over_http(kobo: Kobo) -> None:
    plan = {"rate": 1.0, "kinds": ["500"], "max_in_a_row": 2, "seed": 5}
    answer = kobo.request("POST", "/__terrain__/faults", json=plan)
    assert answer.status_code == 200 and answer.json()["plan"]["max_in_a_row"] == 2
    statuses = [kobo.request("GET", kobo.data()).status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 500]  # the same request never fails more than twice running
    assert kobo.request("POST", "/__terrain__/faults", json={"rate": 0.2, "kinds": ["418"]}).status_code == 400
    assert kobo.request("POST", "/__terrain__/faults", json={"rate": 2}).status_code == 400

    def run() -> list[int]:
        kobo.server.faults = FaultPlan(rate=0.5, kinds=("500", "502", "429"), seed=42, retry_after=0)
        return [kobo.request("GET", kobo.data(), params={"start": i}).status_code for i in range(20)]

    first = run()
    assert first == run() and {500, 502, 429, 200} <= set(first)
    kobo.server.faults = FaultPlan()
    assert all(kobo.request("GET", kobo.data(), params={"start": i}).status_code == 200 for i in range(5))


def test_latency_applies_to_every_api_request_but_not_to_control(kobo: Kobo) -> None:
    kobo.server.faults = FaultPlan(latency_seconds=0.3)
    for path in (kobo.data(), "/api/v2/assets/", "/token/"):
        started = time.monotonic()
        kobo.request("GET", path)
        assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    kobo.request("GET", "/__terrain__/faults")
    assert time.monotonic() - started < 0.3


# -- older and newer servers (§0) --------------------------------------------------------
def test_old_and_new_server_behaviour_switch_on_one_server(kobo: Kobo) -> None:
    new = kobo.request("GET", kobo.data(), params={"limit": 1000}).json()
    assert new["results"] == kobo.asset.submissions and all("_tags" not in d for d in new["results"])
    assert kobo.request("POST", "/__terrain__/behaviour", json={"new_style": False}).json() == {"new_style": False}
    old = kobo.request("GET", kobo.data()).json()  # no limit: 30000 on older servers, and no sort
    assert len(old["results"]) == 40 and old["next"] is None
    assert [d["_id"] for d in old["results"]] == kobo.asset._ids  # natural (insertion) order
    assert all(d["_tags"] == [] and d["_notes"] == [] for d in old["results"])
    assert [{k: v for k, v in d.items() if k not in ("_tags", "_notes")} for d in old["results"]] == new["results"]
    projected = kobo.request("GET", kobo.data(), params={"fields": json.dumps(["_id", "_tags"]), "limit": 1}).json()
    assert set(projected["results"][0]) == {"_id", "_tags", "_uuid", "meta/rootUuid", "_validation_status"}
    one = kobo.asset.submissions[0]
    assert kobo.request("GET", kobo.data(f"{one['_id']}/")).json()["_notes"] == []
    # rootUuid lookups came later (kpi 2.026.07); _uuid, where allowed, matches until an edit.
    assert kobo.request("GET", kobo.data(f"{_root(one)}/validation_status/")).status_code == 404
    assert kobo.request("GET", kobo.data(f"{one['_id']}/validation_status/")).status_code == 200
    kobo.server.new_style = True
    assert kobo.request("GET", kobo.data(), params={"limit": 1000}).json() == new


# -- attachments (§4.3, §5) -----------------------------------------------------------------
def test_attachments_are_listed_for_every_media_answer(kobo: Kobo) -> None:
    with_photo = next(s for s in kobo.asset.submissions if "photo" in s)
    by_xpath = {a["question_xpath"]: a for a in with_photo["_attachments"]}
    assert set(by_xpath) == {"photo", "meta/audit"} and "meta/audit" in with_photo
    photo, audit = by_xpath["photo"], by_xpath["meta/audit"]
    url = f"{kobo.server.url}/api/v2/assets/{kobo.asset.uid}/data/{with_photo['_id']}/attachments/{photo['uid']}/"
    assert photo == {
        "download_url": url, "download_large_url": url + "large/", "download_medium_url": url + "medium/",
        "download_small_url": url + "small/", "mimetype": "image/jpeg",
        "filename": f"terrain_demo/attachments/{kobo.asset.formhub_uuid}/{_root(with_photo)}/{with_photo['photo']}",
        "media_file_basename": with_photo["photo"], "uid": photo["uid"], "question_xpath": "photo", "is_deleted": False}
    assert re.fullmatch(r"att[A-Za-z0-9]{21}", photo["uid"])
    assert audit["mimetype"] == "text/csv" and "download_small_url" not in audit
    assert all(len(s["_attachments"]) == ("photo" in s) + ("meta/audit" in s) for s in kobo.asset.submissions)
    # URLs carry the host the client used.
    port = kobo.server.url.rsplit(":", 1)[1]
    via_localhost = requests.get(f"http://localhost:{port}{kobo.data(str(with_photo['_id']))}/",
                                 headers={"Authorization": f"Token {kobo.token}"}, timeout=10).json()
    assert via_localhost["_attachments"][0]["download_url"].startswith(f"http://localhost:{port}/api/v2/")


def test_attachments_download_with_auth_and_resume_with_ranges(household) -> None:
    seeded = seeded_server([household], 10, seed=3, attachment_size=300_000)
    asset = seeded.assets["household_survey"]
    document = next(s for s in asset.submissions if "photo" in s)
    by_xpath = {a["question_xpath"]: a for a in document["_attachments"]}
    photo, audit = by_xpath["photo"], by_xpath["meta/audit"]
    headers = {"Authorization": f"Token {seeded.token}"}
    with seeded.server as server:
        full = requests.get(photo["download_url"], headers=headers, timeout=10)
        assert full.status_code == 200 and full.headers["Content-Type"] == "image/jpeg"
        assert full.headers["Content-Disposition"] == f"attachment; filename={document['photo']}"
        body = full.content
        assert len(body) == 300_000 and body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"
        assert requests.get(photo["download_url"], headers=headers, timeout=10).content == body  # deterministic
        assert requests.get(photo["download_url"], timeout=10).status_code == 404  # no token, no file
        small = requests.get(photo["download_small_url"], headers=headers, timeout=10).content
        assert small[:2] == b"\xff\xd8" and len(small) < len(body)
        csv = requests.get(audit["download_url"], headers=headers, timeout=10)
        assert csv.headers["Content-Type"] == "text/csv" and csv.text.startswith("event,node,start,end\n")
        # ?xpath= finds the same file; its 400s are kpi's.
        lookup = f"{server.url}/api/v2/assets/{asset.uid}/data/{document['_id']}/attachments/"
        assert requests.get(lookup, params={"xpath": "photo"}, headers=headers, timeout=10).content == body
        assert requests.get(lookup, headers=headers, timeout=10).json() == {
            "detail": "`xpath` query parameter is required"}
        assert requests.get(lookup, params={"xpath": "nowhere"}, headers=headers, timeout=10).json() == {
            "detail": "The path could not be found in the submission"}
        assert requests.get(lookup + "attNoSuchAttachment000000/", headers=headers, timeout=10).status_code == 404
        # A download cut by a truncated body resumes with a Range request, to the same bytes.
        server.faults = FaultPlan(rate=1.0, kinds=("truncated",))
        received = b""
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            with requests.get(photo["download_url"], headers=headers, stream=True, timeout=10) as cut:
                for chunk in cut.iter_content(16384):
                    received += chunk
        assert 0 < len(received) < len(body)
        server.faults = FaultPlan()
        rest = requests.get(photo["download_url"], headers={**headers, "Range": f"bytes={len(received)}-"}, timeout=10)
        assert rest.status_code == 206
        assert rest.headers["Content-Range"] == f"bytes {len(received)}-{len(body) - 1}/{len(body)}"
        assert received + rest.content == body
        tail = requests.get(photo["download_url"], headers={**headers, "Range": "bytes=-10"}, timeout=10)
        assert tail.status_code == 206 and tail.content == body[-10:]
        beyond = requests.get(photo["download_url"], headers={**headers, "Range": f"bytes={len(body)}-"}, timeout=10)
        assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(body)}"


def test_basic_auth_header_is_checked(kobo: Kobo) -> None:
    garbled = kobo.request("GET", kobo.data(), token=None, headers={"Authorization": "Basic %%%"})
    assert garbled.status_code == 401
    good = base64.b64encode(b"terrain_demo:s3cret").decode()
    answer = kobo.request("GET", kobo.data(), token=None, headers={"Authorization": f"Basic {good}"})
    assert answer.json()["count"] == 40

"""`terrain forms publish`: importing the .xlsx into KoboToolbox and deploying it
(kobo-api.md §6.2, §6.3), over real HTTP against the local server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from forms.build import BuiltForm, build_form, write_xlsx
from forms.errors import FormError
from forms.source import SOURCES_DIR, load_source
from kobo.client import KoboClient
from kobo.content import content_from_source
from kobo.errors import ServerUnavailable
from kobo.publish import FormRejected, PublishError, find_asset, publish_form
from kobo.seed import seeded_server
from kobo.server import LocalKoboServer

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FAST = {"poll_interval": 0.01, "timeout": 30}


@dataclasses.dataclass
class Kobo:
    server: LocalKoboServer
    token: str

    def get(self, path: str, token: str | None = "valid", **params) -> requests.Response:
        return requests.get(self.server.url + path, headers=self.headers(token), params=params, timeout=10)

    def headers(self, token: str | None = "valid") -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Token {self.token if token == 'valid' else token}"}

    def client(self, **options) -> KoboClient:
        return KoboClient(self.server.url, self.token, **options)

    def post_import(self, xlsx: bytes, token: str | None = "valid", **fields: str) -> requests.Response:
        return requests.post(self.server.url + "/api/v2/imports/", headers=self.headers(token), data=fields,
                             files={"file": ("form.xlsx", xlsx, XLSX_TYPE)}, timeout=10)

    def wait_for_import(self, uid: str) -> dict:
        for _ in range(100):
            task = self.get(f"/api/v2/imports/{uid}/").json()
            if task["status"] in ("complete", "error"):
                return task
            time.sleep(0.01)
        raise AssertionError(f"import {uid} never finished")

    def deployment(self, method: str, uid: str, body: dict | None = None) -> requests.Response:
        return requests.request(method, f"{self.server.url}/api/v2/assets/{uid}/deployment/",
                                headers=self.headers(), json=body if body is not None else {}, timeout=10)


@pytest.fixture
def kobo() -> Iterator[Kobo]:
    """An empty server: one account with a token, no projects."""
    token = secrets.token_hex(20)
    with LocalKoboServer({token: "terrain_demo"}) as server:
        yield Kobo(server, token)


def _household_source_with(tmp_path: Path, version: str, extra_row: str | None = None) -> Path:
    """A copy of the household survey's markdown source with another version (and a question)."""
    text = (SOURCES_DIR / "household_survey.md").read_text(encoding="utf-8")
    old_version = next(line for line in text.splitlines() if line.startswith("| | household_survey |")).split("|")[3]
    text = text.replace(f"| household_survey |{old_version}|", f"| household_survey | {version} |")
    if extra_row:
        anchor = "| | geopoint | location |"
        text = text.replace(anchor, extra_row + "\n" + anchor)
    path = tmp_path / "household_survey.md"
    path.write_text(text, encoding="utf-8")
    return path


def _small_form(tmp_path: Path, form_id: str, label: str = "Question 1") -> Path:
    path = tmp_path / f"{form_id}.md"
    path.write_text(f"| survey |\n| | type | name | label |\n| | text | q1 | {label} |\n\n"
                    f"| settings |\n| | form_id | version |\n| | {form_id} | 1 |\n", encoding="utf-8")
    return path


def test_publish_creates_and_deploys_the_household_form(kobo: Kobo, household: BuiltForm, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="kobo.publish"), kobo.client() as client:
        result = publish_form(client, household, **FAST)
    assert result.created and not result.redeployed
    assert result.asset_uid.startswith("a") and len(result.asset_uid) == 22
    assert result.version_id.startswith("v") and len(result.version_id) == 22
    detail = kobo.get(f"/api/v2/assets/{result.asset_uid}/").json()
    assert detail["asset_type"] == "survey" and detail["deployment_status"] == "deployed"
    assert detail["has_deployment"] and detail["deployment__active"]
    assert detail["version_id"] == detail["deployed_version_id"] == result.version_id
    assert [v["uid"] for v in detail["deployed_versions"]["results"]] == [result.version_id]
    assert detail["content"]["settings"]["form_id"] == "household_survey"
    assert detail["name"] == "Enquête ménage / Household survey"
    # The server read the uploaded workbook into the same content as a seeded project.
    assert detail["content"] == content_from_source(household.source)
    deployment = kobo.get(f"/api/v2/assets/{result.asset_uid}/deployment/").json()
    assert deployment["backend"] == "openrosa" and deployment["active"] is True
    assert deployment["version_id"] == result.version_id and deployment["asset"]["uid"] == result.asset_uid
    # kpi imports asynchronously: the import answered "processing" before "complete".
    (task,) = kobo.server.imports.values()
    assert task.polls >= 2 and task.status == "complete"
    assert task.messages["created"][0]["uid"] == result.asset_uid
    listing = kobo.get("/api/v2/assets/", q="asset_type:survey AND _deployment_status:deployed").json()
    assert [a["uid"] for a in listing["results"]] == [result.asset_uid]
    assert "published 'household_survey'" in caplog.text and task.uid in caplog.text


def test_publishing_a_new_version_redeploys_the_same_project(kobo: Kobo, household: BuiltForm,
                                                             tmp_path: Path) -> None:
    changed = build_form(_household_source_with(
        tmp_path, "2026120101",
        "| | text | water_notes | Remarques sur l'eau | Notes on water | | | | ${consent} = 'yes' "
        "| | | | | | | | |"))
    assert changed.version == "2026120101" and changed.form_id == household.form_id
    with kobo.client() as client:
        first = publish_form(client, household, **FAST)
        second = publish_form(client, changed, **FAST)
        assert find_asset(client, "household_survey")["uid"] == first.asset_uid
    assert second.asset_uid == first.asset_uid
    assert not second.created and second.redeployed
    assert second.version_id != first.version_id
    detail = kobo.get(f"/api/v2/assets/{first.asset_uid}/").json()
    assert detail["deployed_version_id"] == detail["version_id"] == second.version_id
    assert detail["deployed_versions"]["count"] == 2
    assert [v["uid"] for v in detail["deployed_versions"]["results"]] == [second.version_id, first.version_id]
    assert detail["content"]["settings"]["version"] == "2026120101"
    assert any(row.get("name") == "water_notes" for row in detail["content"]["survey"])
    assert kobo.get("/api/v2/assets/").json()["count"] == 1

    # Publishing the same form again is idempotent: still one project.
    with kobo.client() as client:
        third = publish_form(client, changed, existing_uid=first.asset_uid, **FAST)
    assert third.asset_uid == first.asset_uid and third.redeployed and not third.created
    assert kobo.get("/api/v2/assets/").json()["count"] == 1
    assert len(kobo.server.imports) == 3
    assert all(t.messages.get("updated") for t in list(kobo.server.imports.values())[1:])


def test_redeploying_keeps_the_version_of_earlier_submissions(household: BuiltForm, tmp_path: Path) -> None:
    seeded = seeded_server([household], 20, seed=5)
    asset = seeded.assets["household_survey"]
    old_version = asset.version_uid
    changed = build_form(_household_source_with(tmp_path, "2026120102"))
    with seeded.server as server, KoboClient(server.url, seeded.token) as client:
        result = publish_form(client, changed, **FAST)  # found by its form_id, no uid given
        data = client.get_json(f"api/v2/assets/{asset.uid}/data/", {"limit": 1000})
        detail = client.get_asset(asset.uid)
    assert result.asset_uid == asset.uid and result.redeployed and not result.created
    assert {s["__version__"] for s in data["results"]} == {old_version} and data["count"] == 20
    assert [v["uid"] for v in detail["deployed_versions"]["results"]] == [result.version_id, old_version]


def test_an_unreadable_xlsx_is_a_clear_error_naming_the_form(kobo: Kobo, household: BuiltForm) -> None:
    broken = dataclasses.replace(household, xlsx=b"this is not a workbook")
    with kobo.client() as client, pytest.raises(FormRejected) as caught:
        publish_form(client, broken, **FAST)
    message = str(caught.value)
    assert "'household_survey'" in message and "could not import" in message
    assert "File is not a zip file" in message  # the server's own error, quoted
    assert isinstance(caught.value, FormError)
    (task,) = kobo.server.imports.values()
    assert task.status == "error" and task.messages["error_type"] == "PyXFormReadError"
    assert kobo.get("/api/v2/assets/").json()["count"] == 0


def test_a_form_pyxform_rejects_fails_at_deployment_as_on_kpi(kobo: Kobo, tmp_path: Path) -> None:
    good = build_form(_small_form(tmp_path, "small_form"))
    (tmp_path / "broken").mkdir()
    unlabelled = write_xlsx(load_source(_small_form(tmp_path / "broken", "small_form", label="")))
    broken = dataclasses.replace(good, xlsx=unlabelled)
    with kobo.client() as client:
        with pytest.raises(FormRejected) as caught:
            publish_form(client, broken, **FAST)
        message = str(caught.value)
        assert "could not deploy 'small_form'" in message
        assert "The survey element named 'q1' has no label or hint." in message
        # kpi imported the content (a draft project); the fixed form is deployed into it.
        (draft,) = kobo.get("/api/v2/assets/").json()["results"]
        assert draft["deployment_status"] == "draft"
        fixed = publish_form(client, good, **FAST)
    assert fixed.asset_uid == draft["uid"] and not fixed.created and not fixed.redeployed
    assert kobo.get(f"/api/v2/assets/{draft['uid']}/").json()["deployment_status"] == "deployed"


def test_omitting_library_creates_a_library_block(kobo: Kobo, household: BuiltForm) -> None:
    omitted = kobo.post_import(household.xlsx)
    assert omitted.status_code == 201
    created = omitted.json()
    assert created["status"] == "processing" and created["uid"].startswith("i")
    assert created["url"] == f"{kobo.server.url}/api/v2/imports/{created['uid']}/"
    task = kobo.wait_for_import(created["uid"])
    assert task["status"] == "complete"
    block = kobo.get(f"/api/v2/assets/{task['messages']['created'][0]['uid']}/").json()
    assert block["asset_type"] == "block" and not block["has_deployment"]
    assert kobo.deployment("POST", block["uid"], {"active": True}).status_code == 500  # BadAssetTypeException

    survey_task = kobo.wait_for_import(kobo.post_import(household.xlsx, library="false").json()["uid"])
    survey = kobo.get(f"/api/v2/assets/{survey_task['messages']['created'][0]['uid']}/").json()
    assert survey["asset_type"] == "survey"
    desired = kobo.wait_for_import(kobo.post_import(household.xlsx, desired_type="survey").json()["uid"])
    assert kobo.get(f"/api/v2/assets/{desired['messages']['created'][0]['uid']}/").json()["asset_type"] == "survey"
    surveys = kobo.get("/api/v2/assets/", q="asset_type:survey").json()
    assert surveys["count"] == 2


def test_deployment_endpoints_follow_kpi(kobo: Kobo, household: BuiltForm) -> None:
    task = kobo.wait_for_import(kobo.post_import(household.xlsx, library="false").json()["uid"])
    uid = task["messages"]["created"][0]["uid"]
    version = kobo.get(f"/api/v2/assets/{uid}/").json()["version_id"]
    assert kobo.get(f"/api/v2/assets/{uid}/deployment/").status_code == 404
    patched = kobo.deployment("PATCH", uid, {"version_id": version, "active": True})
    assert patched.status_code == 405 and patched.json() == {"detail": "Use POST to create a new deployment"}

    first = kobo.deployment("POST", uid, {"active": True})
    assert first.status_code == 200
    body = first.json()
    assert body["backend"] == "openrosa" and body["active"] is True and body["version_id"] == version
    assert body["asset"]["uid"] == uid and body["asset"]["deployment_status"] == "deployed"
    again = kobo.deployment("POST", uid, {"active": True})
    assert again.status_code == 405 and again.json() == {"detail": "Use PATCH to update an existing deployment"}

    stale = kobo.deployment("PATCH", uid, {"version_id": "vNotTheCurrentVersion0", "active": True})
    assert stale.status_code == 500  # kpi's NotImplementedError is not a DRF exception
    archived = kobo.deployment("PATCH", uid, {"active": False}).json()
    assert archived["active"] is False and archived["asset"]["deployment_status"] == "archived"
    assert archived["asset"]["deployment__active"] is False and archived["version_id"] == version
    assert kobo.deployment("PATCH", uid, {"backend": "mock"}).json() == {
        "backend": "This field cannot be modified after the initial deployment."}
    redeployed = kobo.deployment("PATCH", uid, {"version_id": version, "active": True}).json()
    assert redeployed["active"] is True and redeployed["asset"]["deployed_versions"]["count"] == 1

    # ``active`` defaults to false: deployed, but archived.
    other = kobo.wait_for_import(kobo.post_import(household.xlsx, library="false").json()["uid"])
    silent = kobo.deployment("POST", other["messages"]["created"][0]["uid"], {}).json()
    assert silent["active"] is False and silent["asset"]["has_deployment"] is True
    assert silent["asset"]["deployment_status"] == "archived"


def test_import_needs_a_valid_token(kobo: Kobo, household: BuiltForm) -> None:
    anonymous = kobo.post_import(household.xlsx, token=None, library="false")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Authentication credentials were not provided."}
    bad = kobo.post_import(household.xlsx, token="0" * 40, library="false")
    assert bad.status_code == 401 and bad.json() == {"detail": "Invalid token."}
    assert kobo.server.imports == {}
    task = kobo.post_import(household.xlsx, library="false").json()
    assert kobo.get(f"/api/v2/imports/{task['uid']}/", token=None).status_code == 404
    assert kobo.get("/api/v2/imports/").json()["count"] == 1


def test_import_into_a_missing_destination_is_an_import_error(kobo: Kobo, household: BuiltForm) -> None:
    destination = f"{kobo.server.url}/api/v2/assets/aNoSuchAsset0000000000/"
    posted = kobo.post_import(household.xlsx, library="false", destination=destination)
    task = kobo.wait_for_import(posted.json()["uid"])
    assert task["status"] == "error"
    assert task["messages"] == {"error_type": "DoesNotExist", "error": "Asset matching query does not exist."}


def test_publish_errors_name_the_form_and_the_cause(kobo: Kobo, household: BuiltForm, tmp_path: Path) -> None:
    small = build_form(_small_form(tmp_path, "small_form"))
    with kobo.client() as client:
        first = publish_form(client, household, **FAST)
        with pytest.raises(PublishError, match="holds form 'household_survey', not 'small_form'"):
            publish_form(client, small, existing_uid=first.asset_uid, **FAST)
        with pytest.raises(PublishError, match="no such project"):
            publish_form(client, small, existing_uid="aNoSuchAsset0000000000", **FAST)
    slow = LocalKoboServer({kobo.token: "terrain_demo"}, import_polls=10 ** 6)
    with slow, KoboClient(slow.url, kobo.token) as client:
        with pytest.raises(PublishError, match="'small_form' .* is still 'processing' after 0.2 s"):
            publish_form(client, small, poll_interval=0.05, timeout=0.2)


def test_writes_are_retried_only_when_they_never_reached_the_server(kobo: Kobo, household: BuiltForm) -> None:
    with kobo.client() as client:
        result = publish_form(client, household, **FAST)
        before = kobo.server.requests_served
        with pytest.raises(ServerUnavailable, match="not retried"):
            client.patch_json(f"api/v2/assets/{result.asset_uid}/deployment/",
                              {"version_id": "vNotTheCurrentVersion0"})
        assert kobo.server.requests_served - before == 1
    with socket.socket() as probe:  # a port just freed on 127.0.0.1: connecting is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with KoboClient(url, kobo.token, retries=2, backoff=0.01) as client:
        with pytest.raises(ServerUnavailable, match="gave up after 3 attempts"):
            client.post_multipart("api/v2/imports/", {"library": "false"},
                                  {"file": ("f.xlsx", household.xlsx, XLSX_TYPE)})

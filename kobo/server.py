"""A local KoboToolbox-compatible server on 127.0.0.1, for the demo and the tests.

It follows ../shared/kobo-api.md (the real API as read from kpi): token auth and its
error shapes (§1.4), the asset list and detail (§2), and ``/data/`` with kpi's
paging, silent limit cap, ``query``/``sort``/``fields`` and flat string documents
(§3, §4). ``new_style=False`` switches to older servers' page size (default and cap
30000, no default sort).

Forms are created and deployed as kpi does (§6.2, §6.3): ``POST /api/v2/imports/``
takes a multipart XLSForm upload and finishes asynchronously (polled with
``GET /api/v2/imports/{uid}/``), and ``/api/v2/assets/{uid}/deployment/`` deploys
(POST), redeploys or archives (PATCH) and describes (GET) a deployment.
"""

from __future__ import annotations

import base64
import bisect
import email.parser
import email.policy
import io
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

NEW_DEFAULT_LIMIT, NEW_MAX_LIMIT = 100, 1000
OLD_LIMIT = 30000
ALLOWED_OPERATORS = {"$or", "$and", "$in", "$nin", "$not", "$exists", "$gt", "$gte", "$lt", "$lte",
                     "$regex", "$options", "$all", "$elemMatch", "$ne", "$expr", "$ifNull"}
# kpi's uids are shortuuid strings: this alphabet leaves out look-alike characters (0/O, 1/l/I).
UID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SERVER_ERROR_HTML = b"\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n" \
                    b"<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"


def random_uid(prefix: str, length: int = 21) -> str:
    """A fresh kpi-style uid: ``a`` + 21 characters for assets, ``v`` for versions, ``i`` for imports."""
    return prefix + "".join(secrets.choice(UID_ALPHABET) for _ in range(length))


class BadRequest(Exception):
    def __init__(self, body: Any):
        super().__init__(str(body))
        self.body = body


class ApiError(Exception):
    """Any non-200 answer with a JSON body, e.g. 405 ``{"detail": "Use PATCH ..."}``."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {body}")
        self.status, self.body, self.headers = status, body, headers or {}


class ServerError(Exception):
    """An exception kpi does not map to a DRF response: Django answers 500 with an HTML page."""


@dataclass
class ServedAsset:
    """One project on the server: its form content, deployment and submissions."""

    uid: str
    name: str
    content: dict[str, Any]
    version_uid: str
    formhub_uuid: str
    owner: str = "terrain_demo"
    deployed: bool = True  # kpi's has_deployment
    submissions: list[dict[str, Any]] = field(default_factory=list)
    asset_type: str = "survey"  # survey | block | question | template | empty
    active: bool = True  # False: deployed but archived
    deployed_versions: list[str] = field(default_factory=list)  # newest first
    _ids: list[int] = field(default_factory=list, repr=False)
    _encoded: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.submissions.sort(key=lambda s: s["_id"])
        self._ids = [s["_id"] for s in self.submissions]
        if self.deployed and not self.deployed_versions:
            self.deployed_versions = [self.version_uid]

    @property
    def versions_deployed(self) -> list[str]:
        """Deployed version uids, newest first (the current one if ``deployed`` was set by hand)."""
        if not self.deployed:
            return []
        return self.deployed_versions or [self.version_uid]

    @property
    def deployed_version_id(self) -> str | None:
        return (self.versions_deployed or [None])[0]

    @property
    def deployment_status(self) -> str:
        if not self.deployed:
            return "draft"
        return "deployed" if self.active else "archived"

    def encoded(self, submission: dict[str, Any]) -> bytes:
        """Documents are serialised once; pages are joined from these bytes."""
        key = submission["_id"]
        if key not in self._encoded:
            self._encoded[key] = json.dumps(submission, ensure_ascii=False, separators=(",", ":")).encode()
        return self._encoded[key]

    def add(self, submission: dict[str, Any]) -> None:
        position = bisect.bisect_left(self._ids, submission["_id"])
        self._ids.insert(position, submission["_id"])
        self.submissions.insert(position, submission)

    def replace(self, submission: dict[str, Any]) -> None:
        position = bisect.bisect_left(self._ids, submission["_id"])
        self.submissions[position] = submission
        self._encoded.pop(submission["_id"], None)

    def delete(self, submission_id: int) -> None:
        position = bisect.bisect_left(self._ids, submission_id)
        if position < len(self._ids) and self._ids[position] == submission_id:
            del self._ids[position]
            del self.submissions[position]
            self._encoded.pop(submission_id, None)


# -- a small Mongo filter, with kpi's whitelist of operators (kobo-api.md §3.3) ---------
def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)) or \
        (isinstance(a, str) and isinstance(b, str))


def _match_operator(op: str, value: Any, argument: Any, present: bool) -> bool:
    if op not in ALLOWED_OPERATORS:
        return False  # kpi turns unknown operators into literal field names: nothing matches
    if op == "$exists":
        return present == bool(argument)
    if op == "$ne":
        return value != argument
    if op == "$in":
        return isinstance(argument, list) and value in argument
    if op == "$nin":
        return isinstance(argument, list) and value not in argument
    if op == "$regex":
        return isinstance(value, str) and re.search(str(argument), value) is not None
    if op == "$options":
        return True
    if op == "$not":
        return not _match_condition(value, argument, present)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not present or not _comparable(value, argument):
            return False
        return {"$gt": value > argument, "$gte": value >= argument,
                "$lt": value < argument, "$lte": value <= argument}[op]
    return False


def _match_condition(value: Any, condition: Any, present: bool) -> bool:
    if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
        return all(_match_operator(op, value, arg, present) for op, arg in condition.items())
    return present and value == condition


def matches(document: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, condition in query.items():
        if key == "$and":
            if not all(matches(document, q) for q in condition):
                return False
        elif key == "$or":
            if not any(matches(document, q) for q in condition):
                return False
        elif key.startswith("$") or ("." in key and not key.startswith("_validation_status.")):
            return False
        else:
            if key.startswith("_validation_status."):
                value = document.get("_validation_status", {}).get(key.split(".", 1)[1])
                present = value is not None
            else:
                present = key in document
                value = document.get(key)
            if key == "_id" and not isinstance(condition, dict):
                try:
                    condition = int(condition)
                except (TypeError, ValueError):
                    return False
            if not _match_condition(value, condition, present):
                return False
    return True


def _id_floor(query: dict[str, Any]) -> tuple[int, bool] | None:
    """The fast path for keyset paging: a query that is only ``{"_id": {"$gt"|"$gte": n}}``."""
    if set(query) != {"_id"} or not isinstance(query["_id"], dict) or len(query["_id"]) != 1:
        return None
    op, value = next(iter(query["_id"].items()))
    if op in ("$gt", "$gte") and isinstance(value, int) and not isinstance(value, bool):
        return value, op == "$gt"
    return None


class LocalKoboServer:
    """Serves assets over HTTP on 127.0.0.1 in a background thread.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, tokens: dict[str, str], assets: list[ServedAsset] | None = None,
                 new_style: bool = True, host: str = "127.0.0.1", port: int = 0, prefix: str = "",
                 import_polls: int = 1):
        self.tokens = dict(tokens)
        self.assets: dict[str, ServedAsset] = {a.uid: a for a in assets or []}
        self.new_style = new_style
        self.prefix = prefix.rstrip("/")
        self.lock = threading.RLock()
        self.requests_served = 0
        # Imports run "in the background" as kpi's Celery task does: a task answers
        # "processing" to its first ``import_polls`` GETs and is processed on the next one.
        self.imports: dict[str, ImportTask] = {}
        self.import_polls = import_polls
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    @property
    def default_limit(self) -> int:
        return NEW_DEFAULT_LIMIT if self.new_style else OLD_LIMIT

    @property
    def max_limit(self) -> int:
        return NEW_MAX_LIMIT if self.new_style else OLD_LIMIT

    def start(self) -> "LocalKoboServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-kobo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LocalKoboServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the API ------------------------------------------------------------------------
    def user_for(self, authorization: str | None) -> tuple[str | None, bool]:
        """(username, header_was_sent). A sent but unknown token is rejected by the caller."""
        if not authorization:
            return None, False
        keyword, _, key = authorization.partition(" ")
        if keyword.lower() != "token" or not key.strip() or " " in key.strip():
            return None, True
        return self.tokens.get(key.strip()), True

    def asset_summary(self, asset: ServedAsset, base: str) -> dict[str, Any]:
        return {
            "url": f"{base}/api/v2/assets/{asset.uid}/",
            "uid": asset.uid,
            "name": asset.name,
            "asset_type": asset.asset_type,
            "owner__username": asset.owner,
            "version_id": asset.version_uid,
            "deployed_version_id": asset.deployed_version_id,
            "has_deployment": asset.deployed,
            "deployment__active": asset.deployed and asset.active,
            "deployment__uuid": asset.formhub_uuid,
            "deployment__submission_count": len(asset.submissions),
            "deployment_status": asset.deployment_status,
            "data": f"{base}/api/v2/assets/{asset.uid}/data/",
            "settings": {"description": "", "country": [{"value": "MLI", "label": "Mali"}]},
        }

    def asset_detail(self, asset: ServedAsset, base: str) -> dict[str, Any]:
        detail = self.asset_summary(asset, base)
        detail["content"] = asset.content
        versions = asset.versions_deployed
        detail["deployed_versions"] = {
            "count": len(versions), "next": None, "previous": None,
            "results": [{"uid": v, "url": f"{base}/api/v2/assets/{asset.uid}/versions/{v}/"} for v in versions],
        }
        return detail

    def list_assets(self, params: dict[str, str], base: str, user: str | None) -> dict[str, Any]:
        assets = list(self.assets.values()) if user else []
        q = params.get("q", "")
        for status in re.findall(r"_deployment_status:(\w+)", q):
            assets = [a for a in assets if a.deployment_status == status]
        for kind in re.findall(r"asset_type:(\w+)", q):
            assets = [a for a in assets if a.asset_type == kind]
        start, limit = _int_param(params, "start", 0, 0), _int_param(params, "limit", 100, 1)
        limit = min(limit, NEW_MAX_LIMIT)
        page = assets[start:start + limit]
        return _envelope(base + "/api/v2/assets/", params, len(assets), start, limit,
                         [self.asset_summary(a, base) for a in page])

    def data_page(self, asset: ServedAsset, params: dict[str, str], path: str) -> bytes:
        if "count" in params:
            raise BadRequest({"count": "This param is not implemented. Use `count` property of the response instead."})
        limit = _int_param(params, "limit", self.default_limit, 1, "A positive integer is required")
        limit = min(limit, self.max_limit)
        start = _int_param(params, "start", 0, 0, "A positive integer is required.")
        query = _json_param(params, "query", {}, dict)
        sort = _json_param(params, "sort", {"_id": 1} if self.new_style else {}, dict)
        fields = _json_param(params, "fields", None, list)
        with self.lock:
            documents = asset.submissions
            floor = _id_floor(query) if sort in ({"_id": 1}, {}) else None
            if floor is not None:
                cut = (bisect.bisect_right if floor[1] else bisect.bisect_left)(asset._ids, floor[0])
                total = len(documents) - cut
                page = documents[cut + start: cut + start + limit]
            else:
                selected = [d for d in documents if matches(d, query)] if query else list(documents)
                for key, direction in reversed(list(sort.items())):
                    selected.sort(key=lambda d, k=key: _sort_key(d.get(k)), reverse=direction == -1)
                total = len(selected)
                page = selected[start:start + limit]
            if fields is None:
                encoded = [asset.encoded(d) for d in page]
            else:
                wanted = set(fields) | {"_uuid", "meta/rootUuid"}
                encoded = [json.dumps({**{k: v for k, v in d.items() if k in wanted},
                                       "_validation_status": d.get("_validation_status", {})},
                                      ensure_ascii=False, separators=(",", ":")).encode() for d in page]
        envelope = _envelope(path, params, total, start, limit, None)
        head = json.dumps({k: envelope[k] for k in ("count", "next", "previous")}).encode()[:-1]
        return head + b',"results":[' + b",".join(encoded) + b"]}"

    # -- imports (kobo-api.md §6.2) -----------------------------------------------------
    def create_import(self, user: str, fields: dict[str, Any]) -> "ImportTask":
        """kpi's ``ImportTaskViewSet.create``: records the task; processing comes later."""
        data: dict[str, Any] = {
            # kpi: ``request.POST.get('library') not in ['false', False]``, so an omitted
            # ``library`` means a library import (kobo-api.md §6.2, the pitfall).
            "library": _field_text(fields.get("library")) not in ("false", False),
            "filename": _field_text(fields.get("name")),  # kpi takes the file name from ``name``
            "destination": _field_text(fields.get("destination")),
            "desired_type": _field_text(fields.get("desired_type")),
        }
        payload: bytes | None = None
        if "base64Encoded" in fields:
            encoded = _field_text(fields["base64Encoded"]) or ""
            encoded = encoded[encoded.index("base64") + 7:] if "base64" in encoded else encoded
            payload = base64.b64decode(encoded)
        elif "file" in fields:
            payload = fields["file"] if isinstance(fields["file"], bytes) else str(fields["file"]).encode()
        elif "url" in fields:
            data["single_xls_url"] = _field_text(fields["url"])
        task = ImportTask(uid=random_uid("i"), user=user, data=data, payload=payload,
                          date_created=_now())
        with self.lock:
            self.imports[task.uid] = task
        return task

    def import_body(self, task: "ImportTask", base: str) -> dict[str, Any]:
        return {"url": f"{base}/api/v2/imports/{task.uid}/", "status": task.status, "messages": task.messages,
                "uid": task.uid, "date_created": task.date_created}

    def poll_import(self, task: "ImportTask", base: str) -> dict[str, Any]:
        with self.lock:
            task.polls += 1
            if task.status in ("created", "processing") and task.polls > self.import_polls:
                self._run_import(task, base)
            return self.import_body(task, base)

    def _run_import(self, task: "ImportTask", base: str) -> None:
        """kpi's ``ImportTask.run``/``_parse_b64_upload``: any exception becomes status
        ``error`` with ``messages.error`` and ``messages.error_type``."""
        messages: dict[str, Any] = {}
        try:
            destination = self._resolve_destination(task.data["destination"]) if task.data["destination"] else None
            if task.payload is None:
                if "single_xls_url" in task.data:
                    raise ConnectionError(f"the local server does not fetch forms from URLs "
                                          f"({task.data['single_xls_url']})")
                raise Exception("ImportTask data must contain `base64Encoded`, `url`, or `single_xls_url`")
            content = content_from_xlsx(task.payload, task.data["filename"])
            filename = Path(task.data["filename"] or "").stem
            title = content["settings"].get("form_title")
            summary = {"filename": filename, "row_count": len(content["survey"]),
                       "languages": [t for t in content["translations"] if t]}
            if destination is None:
                library, desired = task.data["library"], task.data["desired_type"]
                if desired:
                    asset_type = desired
                elif library and len(content["survey"]) > 1:
                    asset_type = "block"
                elif library:
                    asset_type = "question"
                else:
                    asset_type = "survey"
                asset = ServedAsset(uid=random_uid("a"), name=title or filename, content=content,
                                    version_uid=random_uid("v"), formhub_uuid=uuid.uuid4().hex,
                                    owner=task.user, deployed=False, asset_type=asset_type)
                self.assets[asset.uid] = asset
                key = "created"
            else:
                asset = destination
                if asset.asset_type == "empty":
                    asset.asset_type = "survey"
                asset.name = title or asset.name or filename
                asset.content = content
                asset.version_uid = random_uid("v")  # kpi: every content change is a new version
                key = "updated"
            messages[key] = [{"uid": asset.uid, "summary": summary, "kind": "asset",
                              "owner__username": task.user}]
            task.status = "complete"
        except Exception as error:  # as kpi's ImportExportTask.run: every failure is reported
            messages = {"error_type": type(error).__name__, "error": str(error)}
            task.status = "error"
        task.messages = messages
        task.payload = None

    def _resolve_destination(self, destination: str) -> ServedAsset:
        path = urlsplit(destination).path
        if self.prefix and path.startswith(self.prefix + "/"):
            path = path[len(self.prefix):]
        match = _ASSET_PATH.match(path)
        if not match or (match["rest"] or "").strip("/"):
            raise _named_error("Resolver404", f"{{'path': '{path.lstrip('/')}'}}")
        asset = self.assets.get(match["uid"])
        if asset is None:
            raise _named_error("DoesNotExist", "Asset matching query does not exist.")
        return asset

    # -- deployments (kobo-api.md §6.3) -------------------------------------------------
    def deployment_body(self, asset: ServedAsset, base: str) -> dict[str, Any]:
        return {"backend": "openrosa", "active": asset.active, "version_id": asset.deployed_version_id,
                "asset": self.asset_detail(asset, base)}

    def create_deployment(self, asset: ServedAsset, body: dict[str, Any]) -> None:
        """``POST .../deployment/``: kpi's DeploymentSerializer.create."""
        if asset.asset_type != "survey":
            raise ServerError(f"Only surveys may be deployed, but this asset is a {asset.asset_type}")
        if asset.deployed:
            raise ApiError(405, {"detail": "Use PATCH to update an existing deployment"})
        active = _boolean_field(body, "active", False)  # kpi: ``active`` defaults to False (archived)
        if body.get("backend", "openrosa") != "openrosa":
            raise ServerError(f"cannot retrieve asset backend: \"{body['backend']}\"")
        self._raise_unless_current_version(asset, body)
        self._deploy(asset, active)

    def update_deployment(self, asset: ServedAsset, body: dict[str, Any]) -> None:
        """``PATCH .../deployment/``: redeploy the current version, or only (un)archive."""
        if asset.asset_type != "survey":
            raise ServerError(f"Only surveys may be deployed, but this asset is a {asset.asset_type}")
        if not asset.deployed:
            raise ApiError(405, {"detail": "Use POST to create a new deployment"})
        active = _boolean_field(body, "active", asset.active)
        known = {k: v for k, v in body.items() if k in ("backend", "active", "version_id")}
        if known.pop("backend", "openrosa") != "openrosa":
            raise ApiError(400, {"backend": "This field cannot be modified after the initial deployment."})
        if set(known) == {"active"}:
            asset.active = active
            return
        self._raise_unless_current_version(asset, known)
        self._deploy(asset, active)

    @staticmethod
    def _raise_unless_current_version(asset: ServedAsset, body: dict[str, Any]) -> None:
        if "version_id" in body and str(body["version_id"]) != asset.version_uid:
            # NotImplementedError in kpi: not a DRF exception, so Django answers 500.
            raise ServerError("Only the current version_id can be deployed")

    def _deploy(self, asset: ServedAsset, active: bool) -> None:
        error = compile_content(asset.content, asset.uid)
        if error:
            raise ApiError(400, {"error": error})
        if asset.version_uid in asset.deployed_versions:
            asset.deployed_versions.remove(asset.version_uid)
        asset.deployed_versions.insert(0, asset.version_uid)
        asset.deployed = True
        asset.active = active


@dataclass
class ImportTask:
    """One ``/api/v2/imports/`` task (kpi's ImportTask)."""

    uid: str
    user: str
    data: dict[str, Any]
    payload: bytes | None
    date_created: str
    status: str = "processing"
    messages: dict[str, Any] = field(default_factory=dict)
    polls: int = 0


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _named_error(name: str, message: str) -> Exception:
    """An exception whose class name is kpi's (for ``messages.error_type``)."""
    return type(name, (Exception,), {})(message)


def _field_text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _boolean_field(body: dict[str, Any], name: str, default: bool) -> bool:
    """DRF's BooleanField: true/false, 1/0, "true"/"false", "yes"/"no", "on"/"off"..."""
    if name not in body:
        return default
    value = body[name]
    text = value.lower() if isinstance(value, str) else value
    if text in (True, 1, "true", "t", "1", "yes", "y", "on"):
        return True
    if text in (False, 0, "false", "f", "0", "no", "n", "off"):
        return False
    raise ApiError(400, {name: ["Must be a valid boolean."]})


def content_from_xlsx(xlsx: bytes, filename: str | None = None) -> dict[str, Any]:
    """An uploaded XLSForm workbook as kpi's asset ``content``: pyxform's own reader
    (kpi uses ``xls2json_backends`` too), then the same structure as our seeded assets
    (kobo.content.content_from_source). Raises what pyxform raises on an unreadable file."""
    from pyxform.xls2json_backends import xlsx_to_dict

    from forms.source import FormSource, Sheet
    from kobo.content import content_from_source

    workbook = xlsx_to_dict(io.BytesIO(xlsx))
    sheets: dict[str, Sheet] = {}
    for name, records in workbook.items():
        if name.endswith("_header") or name == "sheet_names" or not isinstance(records, list):
            continue
        headers = workbook.get(f"{name}_header") or []
        header = list(headers[0]) if headers and isinstance(headers[0], dict) else []
        for record in records:
            header += [key for key in record if key not in header]
        rows = [["" if record.get(h) is None else str(record.get(h)) for h in header] for record in records]
        sheets[name.lower()] = Sheet(name=name.lower(), header=header, rows=rows)
    if "survey" not in sheets:
        raise SyntaxError("xls upload must have one of these sheets: survey, library")
    if "settings" in sheets and not sheets["settings"].records():
        del sheets["settings"]
    return content_from_source(FormSource(path=Path(filename or "upload.xlsx"), sheets=sheets))


def compile_content(content: dict[str, Any], form_name: str) -> str | None:
    """Compiles an asset's content with pyxform as kpi does at deployment; the error
    message if it does not compile (kpi answers 400 ``{"error": message}``)."""
    from pyxform.xls2xform import convert

    from kobo.content import xlsform_from_content

    try:
        convert(xlsform_from_content(content), form_name=form_name)
    except Exception as error:  # pyxform raises PyXFormError, but also ValueError/KeyError on odd input
        return str(error) or type(error).__name__
    return None


def parse_form_data(content_type: str, body: bytes) -> dict[str, Any]:
    """A request body as DRF's parsers see it: multipart (parsed with the stdlib
    ``email`` parser; file parts stay bytes), urlencoded, or JSON."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        if "boundary=" not in content_type:
            raise ApiError(400, {"detail": "Multipart form parse error - Invalid boundary in multipart: None"})
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise ApiError(400, {"detail": "Multipart form parse error - Invalid boundary in multipart: None"})
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload if part.get_filename() is not None else payload.decode("utf-8", "replace")
        return fields
    if kind == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as error:
        raise ApiError(400, {"detail": f"JSON parse error - {error}"}) from None
    if not isinstance(parsed, dict):
        raise ApiError(400, {"non_field_errors": ["Invalid data. Expected a dictionary, but got "
                                                  f"{type(parsed).__name__}."]})
    return parsed


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))


def _int_param(params: dict[str, str], name: str, default: int, minimum: int,
               message: str = "A positive integer is required.") -> int:
    if name not in params:
        return default
    try:
        value = int(params[name])
    except ValueError:
        raise BadRequest({name: message}) from None
    if value < minimum:
        raise BadRequest({name: message})
    return value


def _json_param(params: dict[str, str], name: str, default: Any, kind: type) -> Any:
    if name not in params:
        return default
    try:
        value = json.loads(params[name])
    except ValueError:
        raise BadRequest({name: "Value must be valid JSON."}) from None
    if not isinstance(value, kind):
        raise BadRequest(["Unsupported query"])
    return value


def _envelope(url: str, params: dict[str, str], count: int, start: int, limit: int, results: Any) -> dict[str, Any]:
    """DRF LimitOffsetPagination with ``start`` as the offset parameter (kobo-api.md §3.2)."""
    def link(new_start: int | None) -> str:
        query = {k: v for k, v in params.items() if k not in ("start", "limit")}
        query["limit"] = str(limit)
        if new_start:
            query["start"] = str(new_start)
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    next_link = link(start + limit) if start + limit < count else None
    previous_link = None if start <= 0 else link(start - limit if start - limit > 0 else None)
    return {"count": count, "next": next_link, "previous": previous_link, "results": results}


_ASSET_PATH = re.compile(r"^/api/v2/assets/(?P<uid>[A-Za-z0-9]+)(?:/(?P<rest>.*))?$")
_IMPORT_PATH = re.compile(r"^/api/v2/imports/(?P<uid>[A-Za-z0-9]+)/?$")


def _handler_for(server: LocalKoboServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "LocalKobo/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and demo read their own logs
            pass

        def send_json(self, status: int, body: Any, raw: bytes | None = None, headers: dict | None = None) -> None:
            payload = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def send_server_error(self) -> None:
            self.send_response(500)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(SERVER_ERROR_HTML)))
            self.end_headers()
            self.wfile.write(SERVER_ERROR_HTML)

        def begin(self) -> tuple[str, dict[str, str], str, str | None] | None:
            """Counts the request, strips the prefix, checks the token: (path, params, base, user),
            or None when an error was already sent."""
            with server.lock:
                server.requests_served += 1
            parts = urlsplit(self.path)
            path = parts.path
            if server.prefix:
                if not path.startswith(server.prefix + "/"):
                    self.send_json(404, {"detail": "Not found."})
                    return None
                path = path[len(server.prefix):]
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            host = self.headers.get("Host", "127.0.0.1")
            base = f"http://{host}{server.prefix}"
            user, sent = server.user_for(self.headers.get("Authorization"))
            if sent and user is None:
                self.send_json(401, {"detail": "Invalid token."}, headers={"WWW-Authenticate": "Session"})
                return None
            return path, params, base, user

        def answer(self, route: Any, *args: Any) -> None:
            try:
                route(*args)
            except BadRequest as error:
                self.send_json(400, error.body)
            except ApiError as error:
                self.send_json(error.status, error.body, headers=error.headers)
            except ServerError:
                self.send_server_error()

        def read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self) -> None:
            begun = self.begin()
            if begun is not None:
                self.answer(self.route, *begun)

        def do_POST(self) -> None:
            body = self.read_body()  # always read first, so a kept-alive connection stays in step
            begun = self.begin()
            if begun is not None:
                self.answer(self.write_route, "POST", begun[0], body, begun[2], begun[3])

        def do_PATCH(self) -> None:
            body = self.read_body()
            begun = self.begin()
            if begun is not None:
                self.answer(self.write_route, "PATCH", begun[0], body, begun[2], begun[3])

        def form_data(self, body: bytes) -> dict[str, Any]:
            return parse_form_data(self.headers.get("Content-Type", ""), body)

        def write_route(self, method: str, path: str, body: bytes, base: str, user: str | None) -> None:
            not_allowed = {"detail": f'Method "{method}" not allowed.'}
            if path.startswith("/api/v1/"):
                return self.send_json(410, {"detail": "The V1 API has been removed. Please read the migration "
                                                      "article at https://support.kobotoolbox.org/migrating_api.html"})
            if path == "/api/v2/imports/":
                if method != "POST":
                    return self.send_json(405, not_allowed)
                if user is None:
                    return self.send_json(401, {"detail": "Authentication credentials were not provided."},
                                          headers={"WWW-Authenticate": "Session"})
                task = server.create_import(user, self.form_data(body))
                return self.send_json(201, {"uid": task.uid, "url": f"{base}/api/v2/imports/{task.uid}/",
                                            "status": task.status})
            if _IMPORT_PATH.match(path) or path in ("/api/v2/assets/", "/api/v2/assets.json"):
                # Creating an asset from JSON (kobo-api.md §6.1) is not simulated: imports only.
                return self.send_json(405, not_allowed)
            match = _ASSET_PATH.match(path)
            if not match:
                return self.send_json(404, {"detail": "Not found."})
            rest = (match["rest"] or "").rstrip("/")
            with server.lock:
                asset = server.assets.get(match["uid"])
                if asset is None or user is None:
                    detail = "No Asset matches the given query." if (user and rest) else "Not found."
                    return self.send_json(404, {"detail": detail})
                if rest != "deployment":
                    return self.send_json(405 if rest in ("", "data") else 404,
                                          not_allowed if rest in ("", "data") else {"detail": "Not found."})
                fields = self.form_data(body)
                if method == "POST":
                    server.create_deployment(asset, fields)
                else:
                    server.update_deployment(asset, fields)
                return self.send_json(200, server.deployment_body(asset, base))

        def route(self, path: str, params: dict[str, str], base: str, user: str | None) -> None:
            if path.startswith("/api/v1/"):
                return self.send_json(410, {"detail": "The V1 API has been removed. Please read the migration "
                                                      "article at https://support.kobotoolbox.org/migrating_api.html"})
            if path in ("/api/v2/assets/", "/api/v2/assets.json"):
                return self.send_json(200, server.list_assets(params, base, user))
            if path == "/api/v2/imports/":
                with server.lock:
                    tasks = [server.import_body(t, base) for t in server.imports.values() if user and t.user == user]
                start, limit = _int_param(params, "start", 0, 0), _int_param(params, "limit", 100, 1)
                return self.send_json(200, _envelope(base + path, params, len(tasks), start, limit,
                                                     tasks[start:start + limit]))
            imported = _IMPORT_PATH.match(path)
            if imported:
                task = server.imports.get(imported["uid"])
                if task is None or user is None or task.user != user:
                    return self.send_json(404, {"detail": "Not found."})
                return self.send_json(200, server.poll_import(task, base))
            match = _ASSET_PATH.match(path)
            if not match:
                return self.send_json(404, {"detail": "Not found."})
            asset = server.assets.get(match["uid"])
            rest = (match["rest"] or "").rstrip("/")
            if asset is None or user is None:
                detail = "No Asset matches the given query." if (user and rest) else "Not found."
                return self.send_json(404, {"detail": detail})
            if rest in ("", ".json"):
                return self.send_json(200, server.asset_detail(asset, base))
            if rest in ("data", "data.json"):
                if not asset.deployed:
                    return self.send_json(400, {"detail": "The specified asset has not been deployed"})
                url = f"{base}/api/v2/assets/{asset.uid}/{'data/' if rest == 'data' else 'data.json'}"
                return self.send_json(200, None, raw=server.data_page(asset, params, url))
            if rest == "deployment":
                with server.lock:
                    if not asset.deployed:
                        return self.send_json(404, {"detail": "Not found."})
                    return self.send_json(200, server.deployment_body(asset, base))
            return self.send_json(404, {"detail": "Not found."})

    return Handler


"""A local KoboToolbox-compatible server on 127.0.0.1, for the demo and the tests.

It follows ../shared/kobo-api.md (the real API as read from kpi): token auth and its
error shapes (§1.4), the asset list and detail (§2), and ``/data/`` with kpi's
paging, silent limit cap, ``query``/``sort``/``fields`` and flat string documents
(§3, §4). ``new_style=False`` switches to older servers' page size (default and cap
30000, no default sort).
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

NEW_DEFAULT_LIMIT, NEW_MAX_LIMIT = 100, 1000
OLD_LIMIT = 30000
ALLOWED_OPERATORS = {"$or", "$and", "$in", "$nin", "$not", "$exists", "$gt", "$gte", "$lt", "$lte",
                     "$regex", "$options", "$all", "$elemMatch", "$ne", "$expr", "$ifNull"}


class BadRequest(Exception):
    def __init__(self, body: Any):
        super().__init__(str(body))
        self.body = body


@dataclass
class ServedAsset:
    """One project on the server: its form content, deployment and submissions."""

    uid: str
    name: str
    content: dict[str, Any]
    version_uid: str
    formhub_uuid: str
    owner: str = "terrain_demo"
    deployed: bool = True
    submissions: list[dict[str, Any]] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list, repr=False)
    _encoded: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.submissions.sort(key=lambda s: s["_id"])
        self._ids = [s["_id"] for s in self.submissions]

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
                 new_style: bool = True, host: str = "127.0.0.1", port: int = 0, prefix: str = ""):
        self.tokens = dict(tokens)
        self.assets: dict[str, ServedAsset] = {a.uid: a for a in assets or []}
        self.new_style = new_style
        self.prefix = prefix.rstrip("/")
        self.lock = threading.RLock()
        self.requests_served = 0
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
            "asset_type": "survey",
            "owner__username": asset.owner,
            "version_id": asset.version_uid,
            "deployed_version_id": asset.version_uid if asset.deployed else None,
            "has_deployment": asset.deployed,
            "deployment__active": asset.deployed,
            "deployment__uuid": asset.formhub_uuid,
            "deployment__submission_count": len(asset.submissions),
            "deployment_status": "deployed" if asset.deployed else "draft",
            "data": f"{base}/api/v2/assets/{asset.uid}/data/",
            "settings": {"description": "", "country": [{"value": "MLI", "label": "Mali"}]},
        }

    def asset_detail(self, asset: ServedAsset, base: str) -> dict[str, Any]:
        detail = self.asset_summary(asset, base)
        detail["content"] = asset.content
        detail["deployed_versions"] = {
            "count": 1 if asset.deployed else 0, "next": None, "previous": None,
            "results": [{"uid": asset.version_uid, "url": f"{base}/api/v2/assets/{asset.uid}/versions/{asset.version_uid}/"}]
            if asset.deployed else [],
        }
        return detail

    def list_assets(self, params: dict[str, str], base: str, user: str | None) -> dict[str, Any]:
        assets = list(self.assets.values()) if user else []
        q = params.get("q", "")
        if "_deployment_status:deployed" in q:
            assets = [a for a in assets if a.deployed]
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

        def do_GET(self) -> None:
            with server.lock:
                server.requests_served += 1
            parts = urlsplit(self.path)
            path = parts.path
            if server.prefix:
                if not path.startswith(server.prefix + "/"):
                    return self.send_json(404, {"detail": "Not found."})
                path = path[len(server.prefix):]
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            host = self.headers.get("Host", "127.0.0.1")
            base = f"http://{host}{server.prefix}"
            user, sent = server.user_for(self.headers.get("Authorization"))
            if sent and user is None:
                return self.send_json(401, {"detail": "Invalid token."}, headers={"WWW-Authenticate": "Session"})
            try:
                self.route(path, params, base, user)
            except BadRequest as error:
                self.send_json(400, error.body)

        def route(self, path: str, params: dict[str, str], base: str, user: str | None) -> None:
            if path.startswith("/api/v1/"):
                return self.send_json(410, {"detail": "The V1 API has been removed. Please read the migration "
                                                      "article at https://support.kobotoolbox.org/migrating_api.html"})
            if path in ("/api/v2/assets/", "/api/v2/assets.json"):
                return self.send_json(200, server.list_assets(params, base, user))
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
            return self.send_json(404, {"detail": "Not found."})

    return Handler


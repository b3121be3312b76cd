"""One small KoboToolbox API client (after getodk/pyodk): one ``requests.Session``,
clear errors, retries for transient failures only, and a token that never appears
in a repr, a log line or an error message.

Paging follows kobo-api.md's advice for every server version: an explicit ``limit``,
``sort={"_id": 1}``, and keyset paging with ``query={"_id": {"$gt": last}}`` and
``start=0`` instead of deep offsets.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urljoin

import requests

from kobo.errors import (ApiGone, BadRequest, KoboError, NotDeployed, PermissionDenied, ProjectNotFound,
                         ServerUnavailable, TokenRejected)

log = logging.getLogger(__name__)
KF_URL = "https://kf.kobotoolbox.org"
EU_URL = "https://eu.kobotoolbox.org"
DEFAULT_PAGE_SIZE = 1000  # the cap of current servers; older ones allow 30000


@dataclass(frozen=True)
class Page:
    """One page of submissions, and how many remain from its first one on."""

    results: list[dict[str, Any]]
    remaining: int
    last_id: int | None


class KoboClient:
    def __init__(self, base_url: str, token: str, *, page_size: int = DEFAULT_PAGE_SIZE,
                 timeout: tuple[float, float] = (10.0, 130.0), retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, verify_tls: bool = True):
        if not token:
            raise TokenRejected("no KoboToolbox token: set the KOBO_TOKEN environment variable "
                                "(Account Settings > Security > API key in KoboToolbox)")
        self.base_url = base_url.rstrip("/") + "/"
        self.page_size = page_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": "application/json",
                                     "User-Agent": "terrain/0.1"})
        self.session.verify = verify_tls
        if not verify_tls:
            log.warning("TLS certificate verification is OFF for %s: use only on a trusted network", self.base_url)

    def __repr__(self) -> str:
        return f"KoboClient(base_url={self.base_url!r}, token=<hidden>)"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "KoboClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else urljoin(self.base_url, path.lstrip("/"))

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document, retrying transient failures with capped exponential backoff and jitter."""
        url = self._url(path)
        for attempt in range(self.retries + 1):
            try:
                return self._get_once(url, params)
            except ServerUnavailable as error:
                if attempt == self.retries:
                    raise ServerUnavailable(f"{error} (gave up after {self.retries + 1} attempts)") from None
                delay = getattr(error, "retry_after", None)
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("KoboToolbox: %s; retrying in %.1f s (attempt %d of %d)", error, delay,
                            attempt + 2, self.retries + 1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _get_once(self, url: str, params: dict[str, Any] | None) -> Any:
        where = url.split("?")[0]
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise ServerUnavailable(f"no answer from {where} in time") from None
        except requests.ConnectionError:
            raise ServerUnavailable(f"connection to {where} failed or was cut") from None
        status = response.status_code
        if status == 429 or status >= 500:
            error = ServerUnavailable(f"the server answered {status} for {where}")
            retry_after = response.headers.get("Retry-After", "")
            error.retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            raise error
        if status >= 400:
            raise _terminal_error(status, _detail(response), where)
        try:
            return response.json()
        except ValueError:
            raise ServerUnavailable(f"the answer from {where} was not complete JSON") from None

    # -- writes -------------------------------------------------------------------------
    # Retry policy for POST and PATCH: a write is retried only when it certainly never
    # reached the server, i.e. the TCP connection could not be opened (refused, DNS
    # failure, connect timeout), or the server answered 429 (throttled, so not processed).
    # Anything else (a read timeout, a connection cut mid-request, a 5xx) may come after
    # the server acted on the request: an import POSTed twice creates two import tasks,
    # and so possibly two assets, so such failures are raised at once as ServerUnavailable
    # and the caller decides (publish_form looks for the asset again before re-importing).
    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST a JSON body; the JSON answer."""
        return self._write("POST", path, json=body if body is not None else {})

    def patch_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """PATCH a JSON body; the JSON answer."""
        return self._write("PATCH", path, json=body if body is not None else {})

    def post_multipart(self, path: str, fields: dict[str, str] | None = None,
                       files: dict[str, tuple[str, bytes, str]] | None = None) -> Any:
        """POST multipart/form-data: ``fields`` as text parts, ``files`` as
        ``{name: (filename, content, content_type)}``; the JSON answer."""
        return self._write("POST", path, data=dict(fields or {}), files=dict(files or {}))

    def _write(self, method: str, path: str, **body: Any) -> Any:
        url = self._url(path)
        where = url.split("?")[0]
        for attempt in range(self.retries + 1):
            try:
                return self._write_once(method, url, where, body)
            except ServerUnavailable as error:
                if not getattr(error, "not_sent", False):
                    raise
                if attempt == self.retries:
                    raise ServerUnavailable(f"{error} (gave up after {self.retries + 1} attempts)") from None
                delay = getattr(error, "retry_after", None)
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("KoboToolbox: %s; the %s was not processed, retrying in %.1f s (attempt %d of %d)",
                            error, method, delay, attempt + 2, self.retries + 1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _write_once(self, method: str, url: str, where: str, body: dict[str, Any]) -> Any:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **body)
        except requests.ConnectTimeout:
            raise _unsent(f"could not connect to {where} in time") from None
        except requests.ConnectionError as error:
            if _connection_never_opened(error):
                raise _unsent(f"could not connect to {where}") from None
            raise ServerUnavailable(f"the connection to {where} was cut during a {method}: the server may "
                                    f"have processed it, so it was not retried") from None
        except requests.Timeout:
            raise ServerUnavailable(f"no answer from {where} in time to a {method}: the server may have "
                                    f"processed it, so it was not retried") from None
        status = response.status_code
        if status == 429:
            error = _unsent(f"the server answered 429 (too many requests) for {where}")
            retry_after = response.headers.get("Retry-After", "")
            error.retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            raise error
        if status >= 500:
            raise ServerUnavailable(f"the server answered {status} for a {method} to {where}: it may have "
                                    f"been processed in part, so it was not retried")
        if status >= 400:
            raise _terminal_error(status, _detail(response), where)
        try:
            return response.json()
        except ValueError:
            raise ServerUnavailable(f"the answer from {where} was not complete JSON") from None

    # -- resources ----------------------------------------------------------------------
    def list_assets(self, deployed_only: bool = True) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 1000}
        if deployed_only:
            params["q"] = "asset_type:survey AND _deployment_status:deployed"
        assets: list[dict[str, Any]] = []
        url: str | None = "api/v2/assets/"
        while url:
            page = self.get_json(url, params)
            assets.extend(page.get("results", []))
            url, params = page.get("next"), None
        return assets

    def get_asset(self, uid: str) -> dict[str, Any]:
        return self.get_json(f"api/v2/assets/{uid}/")

    def iter_pages(self, uid: str, after_id: int | None = None, fields: list[str] | None = None,
                   until_id: int | None = None, ids: list[int] | None = None) -> Iterator[Page]:
        """Every submission with ``after_id < _id <= until_id`` (or among ``ids``), in ``_id``
        order, one page at a time."""
        last = after_id
        while True:
            params: dict[str, Any] = {"limit": self.page_size, "start": 0, "sort": json.dumps({"_id": 1})}
            bounds: dict[str, Any] = {}
            if last is not None:
                bounds["$gt"] = last
            if until_id is not None:
                bounds["$lte"] = until_id
            if ids is not None:
                bounds["$in"] = ids
            if bounds:
                params["query"] = json.dumps({"_id": bounds})
            if fields is not None:
                params["fields"] = json.dumps(fields)
            body = self.get_json(f"api/v2/assets/{uid}/data/", params)
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise ServerUnavailable(f"the data page of project {uid} has no 'results' list")
            results = body["results"]
            if results:
                last = max(int(r["_id"]) for r in results if isinstance(r, dict) and "_id" in r)
            yield Page(results=results, remaining=int(body.get("count", len(results))), last_id=last)
            if not results or not body.get("next"):
                return


def _unsent(message: str) -> ServerUnavailable:
    error = ServerUnavailable(message)
    error.not_sent = True  # the request never reached the server: safe to send again
    return error


def _connection_never_opened(error: requests.ConnectionError) -> bool:
    """True when urllib3 failed to open the TCP connection (refused, DNS, unreachable),
    so no byte of the request was sent."""
    from urllib3.exceptions import NewConnectionError

    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError)


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or json.dumps(body))
    return json.dumps(body)


def _terminal_error(status: int, detail: str, where: str) -> KoboError:
    if status == 401:
        return TokenRejected("KoboToolbox rejected the token (401): check KOBO_TOKEN and that it belongs "
                             "to an account on this server")
    if status == 403:
        return PermissionDenied(f"the account may not do this on {where} (403): ask the project owner for "
                                f"the permission. Server said: {detail}")
    if status == 404:
        return ProjectNotFound(f"project not found at {where} (404): check the project uid, or share the "
                               f"project with the token's account")
    if status == 410:
        return ApiGone(f"{where} was removed from KoboToolbox (410): {detail}")
    if status == 400 and "not been deployed" in detail:
        return NotDeployed(f"the project at {where} is not deployed (400): deploy it in KoboToolbox first")
    return BadRequest(f"KoboToolbox refused the request to {where} ({status}): {detail}")

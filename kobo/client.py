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
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import duckdb
import requests

from kobo.errors import (ApiGone, BadRequest, KoboError, NotDeployed, PermissionDenied, ProjectNotFound,
                         ServerUnavailable, TokenRejected)

log = logging.getLogger(__name__)
T = TypeVar("T")
KF_URL = "https://kf.kobotoolbox.org"
EU_URL = "https://eu.kobotoolbox.org"
DEFAULT_PAGE_SIZE = 1000  # the cap of current servers; older ones allow 30000
# The text of a page the warehouse parses at once (DuckDB takes some 8 times that while
# parsing): at 1,000 submissions of a few KB each a page is 2-3 MB; pages of long
# submissions are asked for in fewer submissions.
PAGE_BYTES = 3 * 2**20
VALIDATION_STATUSES = {"validation_status_approved": "Approved", "validation_status_not_approved": "Not Approved",
                       "validation_status_on_hold": "On Hold"}


@dataclass(frozen=True)
class Page:
    """One page of submissions as received: its JSON body (UTF-8 bytes), how many results
    it holds, how many remain from its first one on, and its highest ``_id``. The parsed
    results are not kept: the warehouse reads the body itself, and a page of households
    parsed into Python objects takes ten times its size; ``results`` parses it again when
    asked. Bytes, not str: decoded, a page with one accented name takes two bytes a
    character, and a sync holds several pages (fetched ahead, batched)."""

    body: bytes = field(repr=False)
    size: int
    remaining: int
    last_id: int | None
    more: bool = True  # the server has a next page

    @property
    def results(self) -> list[Any]:
        return json.loads(self.body)["results"]


# What paging needs of a page (how many results, the count, the next link, the highest
# _id), read by DuckDB without building Python objects: json.loads holds the interpreter
# for the whole parse (~20 ms a page of households), and the thread loading the previous
# page into the warehouse waited for it at every step. One reader at a time, in little
# memory (a parse takes some 8 times the page's size); a larger page is read by Python.
PAGE_FACTS_SQL = """
SELECT len(page.results), page.count, page.next,
       (SELECT max(CAST(r._id AS BIGINT)) FROM unnest(page.results) AS t(r) WHERE regexp_full_match(r._id, '[0-9]{1,18}'))
FROM (SELECT json_transform(decode($body), '{"count": "VARCHAR", "next": "VARCHAR", "results": [{"_id": "VARCHAR"}]}') AS page)
"""
PAGE_READER_MEMORY = "32MB"
_page_reader: duckdb.DuckDBPyConnection | None = None
_page_reader_lock = threading.Lock()
PageFacts = tuple[int, Any, Any, "int | None"]  # results, count, next, highest usable _id


def read_page(body: bytes) -> Page | None:
    """A data page's body as a Page (None when it has no ``results`` list); ValueError
    when it is not whole JSON in UTF-8."""
    return _page(body, _facts_by_duckdb(body) or _facts_by_python(body))


def _page(body: bytes, facts: PageFacts | None) -> Page | None:
    if facts is None or facts[0] is None:
        return None
    size, count, next_page, last_id = facts
    return Page(body=body, size=size, remaining=int(count) if str(count).isdigit() else size, last_id=last_id,
                more=bool(next_page) and str(next_page) not in ("false", "0"))


def _facts_by_duckdb(body: bytes) -> PageFacts | None:
    """None when the page is too large for the reader's memory."""
    global _page_reader
    with _page_reader_lock:
        if _page_reader is None:
            _page_reader = duckdb.connect(config={"threads": 1, "memory_limit": PAGE_READER_MEMORY})
        try:
            return _page_reader.execute(PAGE_FACTS_SQL, {"body": body}).fetchone()
        except duckdb.OutOfMemoryException:
            return None
        except (duckdb.InvalidInputException, duckdb.ConversionException) as error:  # not JSON, not UTF-8
            raise ValueError(str(error).splitlines()[0]) from None


def _facts_by_python(body: bytes) -> PageFacts | None:
    parsed = json.loads(body)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("results"), list):
        return None
    ids = [int(r["_id"]) for r in parsed["results"]
           if isinstance(r, dict) and str(r.get("_id", "")).isdigit() and len(str(r["_id"])) <= 18]
    return len(parsed["results"]), parsed.get("count"), parsed.get("next"), max(ids, default=None)


class KoboClient:
    def __init__(self, base_url: str, token: str, *, page_size: int = DEFAULT_PAGE_SIZE,
                 timeout: tuple[float, float] = (10.0, 130.0), retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, verify_tls: bool = True):
        if not token:
            raise TokenRejected("pas de jeton KoboToolbox : définissez la variable d'environnement KOBO_TOKEN "
                                "(Paramètres du compte > Sécurité > Clé API dans KoboToolbox)",
                                "no KoboToolbox token: set the KOBO_TOKEN environment variable "
                                "(Account Settings > Security > API key in KoboToolbox)")
        address = urlsplit(base_url)
        if address.scheme not in ("http", "https") or not address.netloc:
            raise KoboError(f"'{base_url}' n'est pas une adresse de serveur : écrivez-la en entier, par exemple "
                            f"https://kf.kobotoolbox.org ou http://127.0.0.1:8000",
                            f"'{base_url}' is not a server address: write it in full, e.g. "
                            f"https://kf.kobotoolbox.org or http://127.0.0.1:8000")
        self.base_url = base_url.rstrip("/") + "/"
        self.page_size = page_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": "application/json",
                                     "User-Agent": "terrain/0.1"})
        # Also passed with every request: requests lets $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE
        # override a session's verify=False (psf/requests#3829), but not a request's.
        self.session.verify = verify_tls
        if not verify_tls:
            log.warning("la vérification des certificats TLS est DÉSACTIVÉE pour %s : seulement sur un réseau de "
                        "confiance / TLS certificate verification is OFF for %s: use only on a trusted network",
                        self.base_url, self.base_url)

    def copy(self) -> "KoboClient":
        """A client with its own session (sessions are not shared between threads)."""
        twin = object.__new__(KoboClient)
        twin.__dict__.update(self.__dict__)
        twin.session = requests.Session()
        twin.session.headers.update(self.session.headers)
        twin.session.verify = self.session.verify
        return twin

    def last_submission_id(self, uid: str) -> int | None:
        """The highest ``_id`` of a project (one tiny request), to split it into ranges."""
        body = self.get_json(f"api/v2/assets/{uid}/data/", {"limit": 1, "sort": json.dumps({"_id": -1}),
                                                             "fields": json.dumps(["_id"])})
        results = body.get("results") or []
        return int(results[0]["_id"]) if results else None

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
        """An absolute URL on this client's server. Absolute URLs given by the server
        (``next``, attachment ``download_url``) keep only their path and query, so the
        token is never sent to another host."""
        if path.startswith(("http://", "https://")):
            given, base = urlsplit(path), urlsplit(self.base_url)
            return urlunsplit((base.scheme, base.netloc, given.path, given.query, ""))
        return urljoin(self.base_url, path.lstrip("/"))

    def _retrying(self, attempt_once: Callable[[], T], retryable: Callable[[ServerUnavailable], bool],
                  what: str) -> T:
        """Runs a request, retrying transient failures with capped exponential backoff and jitter
        (or the server's Retry-After); terminal errors (4xx) are raised at once."""
        for attempt in range(self.retries + 1):
            try:
                return attempt_once()
            except ServerUnavailable as error:
                if not retryable(error):
                    raise
                if attempt == self.retries:
                    raise ServerUnavailable(f"{error.fr} (abandon après {self.retries + 1} essais ; vérifiez l'adresse "
                                            f"du serveur et la connexion, ou réessayez plus tard)",
                                            f"{error.en} (gave up after {self.retries + 1} attempts; check the server "
                                            f"address and the connection, or try again later)") from None
                delay = getattr(error, "retry_after", None)
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("KoboToolbox : %s ; nouvel essai dans %.1f s (essai %d sur %d) / %s; retrying the %s "
                            "in %.1f s (attempt %d of %d)", error.fr, delay, attempt + 2, self.retries + 1,
                            error.en, what, delay, attempt + 2, self.retries + 1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def get_json(self, path: str, params: dict[str, Any] | None = None,
                 read: Callable[[bytes], Any] | None = None) -> Any:
        """GET a JSON document; every transient failure is retried (a GET changes nothing).
        ``read``: what to make of the body as received (raising ValueError if it is not JSON)."""
        url = self._url(path)
        return self._retrying(lambda: self._json_once("GET", url, {"params": params}, read=read),
                              lambda e: True, "GET")

    def _json_once(self, method: str, url: str, body: dict[str, Any], idempotent: bool = True,
                   read: Callable[[bytes], Any] | None = None) -> Any:
        where = url.split("?")[0]
        try:
            response = self.session.request(method, url, timeout=self.timeout, verify=self.session.verify, **body)
            _raise_for_status(response, method, where, idempotent)
            if response.status_code == 204 or not response.content:
                return read(b"{}") if read else {}
            if read:  # JSON is UTF-8 (RFC 8259): no charset to guess, nothing to decode here
                return read(response.content)
            return response.json()
        except requests.ConnectTimeout:
            raise _unsent(f"connexion à {where} impossible dans le délai", f"could not connect to {where} in time") from None
        except requests.Timeout:
            raise ServerUnavailable(f"pas de réponse de {where} dans le délai", f"no answer from {where} in time") from None
        except requests.ConnectionError as error:
            if refused := _certificate_refused(error, where):
                raise refused from None
            if _connection_never_opened(error):
                raise _unsent(f"connexion à {where} impossible", f"could not connect to {where}") from None
            raise ServerUnavailable(f"la connexion à {where} a été coupée", f"the connection to {where} was cut") from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise ServerUnavailable(f"la réponse de {where} a été tronquée", f"the answer from {where} was cut short") from None
        except ValueError:
            raise ServerUnavailable(f"la réponse de {where} n'était pas un JSON complet",
                                    f"the answer from {where} was not complete JSON") from None

    # -- writes -------------------------------------------------------------------------
    # Retry policy for POST and PATCH: a write is retried only when it certainly never
    # reached the server, i.e. the TCP connection could not be opened (refused, DNS
    # failure, connect timeout), or the server answered 429 (throttled, so not processed).
    # Anything else (a read timeout, a connection cut mid-request, a 5xx) may come after
    # the server acted on the request: an import POSTed twice creates two import tasks,
    # and so possibly two assets, so such failures are raised at once as ServerUnavailable
    # and the caller decides (publish_form looks for the asset again before re-importing).
    # Writes that are idempotent (setting a validation status) are retried like reads.
    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST a JSON body; the JSON answer."""
        return self._write("POST", path, json=body if body is not None else {})

    def patch_json(self, path: str, body: dict[str, Any] | None = None, idempotent: bool = False) -> Any:
        """PATCH a JSON body; the JSON answer."""
        return self._write("PATCH", path, idempotent=idempotent, json=body if body is not None else {})

    def post_multipart(self, path: str, fields: dict[str, str] | None = None,
                       files: dict[str, tuple[str, bytes, str]] | None = None) -> Any:
        """POST multipart/form-data: ``fields`` as text parts, ``files`` as
        ``{name: (filename, content, content_type)}``; the JSON answer."""
        return self._write("POST", path, data=dict(fields or {}), files=dict(files or {}))

    def _write(self, method: str, path: str, idempotent: bool = False, **body: Any) -> Any:
        url = self._url(path)
        retryable = (lambda e: True) if idempotent else (lambda e: getattr(e, "not_sent", False))
        return self._retrying(lambda: self._json_once(method, url, body, idempotent), retryable, method)

    # -- files --------------------------------------------------------------------------
    def download(self, url: str, destination: Path) -> int:
        """Streams a file (an attachment) to ``destination``, resuming a partial file with an
        HTTP Range request after a cut; returns its size."""
        url = self._url(url)
        where = url.split("?")[0]

        def once() -> int:
            have = destination.stat().st_size if destination.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self.session.get(url, headers=headers, stream=True, timeout=self.timeout,
                                      verify=self.session.verify) as response:
                    if response.status_code == 416:  # nothing left to fetch
                        return have
                    _raise_for_status(response, "GET", where, True)
                    resumed = response.status_code == 206
                    expected = int(response.headers.get("Content-Length", "-1"))
                    written = 0
                    with destination.open("ab" if resumed else "wb") as handle:
                        for chunk in response.iter_content(chunk_size=256 * 1024):
                            handle.write(chunk)
                            written += len(chunk)
                    if 0 <= expected != written:
                        raise ServerUnavailable(f"le téléchargement de {where} a été tronqué",
                                                f"the download of {where} was cut short")
                    return (have if resumed else 0) + written
            except requests.Timeout:
                raise ServerUnavailable(f"pas de réponse de {where} dans le délai",
                                        f"no answer from {where} in time") from None
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                if refused := _certificate_refused(error, where):
                    raise refused from None
                raise ServerUnavailable(f"le téléchargement de {where} a été coupé",
                                        f"the download of {where} was cut") from None

        return self._retrying(once, lambda e: True, "download")

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

    # -- validation statuses (kobo-api.md §7) -----------------------------------------------
    def get_validation_status(self, uid: str, submission_id: int | str) -> dict[str, Any]:
        return self.get_json(f"api/v2/assets/{uid}/data/{submission_id}/validation_status/")

    def set_validation_status(self, uid: str, submission_id: int | str, status_uid: str) -> dict[str, Any]:
        """Sets one submission's status (validation_status_approved, _not_approved, _on_hold)."""
        return self.patch_json(f"api/v2/assets/{uid}/data/{submission_id}/validation_status/",
                               {"validation_status.uid": status_uid}, idempotent=True)

    def set_validation_statuses(self, uid: str, submission_ids: list[int], status_uid: str) -> int:
        """Sets the status of many submissions at once; returns how many the server updated."""
        if status_uid not in VALIDATION_STATUSES:
            # kpi's bulk endpoint does not check the uid and would clear the statuses instead.
            raise ValueError(f"unknown validation status {status_uid!r}; use one of {sorted(VALIDATION_STATUSES)}")
        updated = 0
        for start in range(0, len(submission_ids), self.page_size):
            chunk = [int(i) for i in submission_ids[start:start + self.page_size]]
            answer = self.patch_json(f"api/v2/assets/{uid}/data/validation_statuses/",
                                     {"payload": {"submission_ids": chunk, "validation_status.uid": status_uid}},
                                     idempotent=True)
            updated += int(str(answer.get("detail", "0")).split()[0] or 0)
        return updated

    def iter_pages(self, uid: str, after_id: int | None = None, fields: list[str] | None = None,
                   until_id: int | None = None, ids: list[int] | None = None,
                   where: dict[str, Any] | None = None) -> Iterator[Page]:
        """Every submission with ``after_id < _id <= until_id`` (or among ``ids``, and
        matching the Mongo query ``where``), in ``_id`` order, one page at a time. Pages are
        kept to some MB of text (see PAGE_BYTES): a page of long submissions is asked for
        again, and the next ones, with a smaller limit."""
        last, limit = after_id, self.page_size
        while True:
            params: dict[str, Any] = {"limit": limit, "start": 0, "sort": json.dumps({"_id": 1})}
            bounds: dict[str, Any] = {}
            if last is not None:
                bounds["$gt"] = last
            if until_id is not None:
                bounds["$lte"] = until_id
            if ids is not None:
                bounds["$in"] = ids
            query = {**(where or {}), **({"_id": bounds} if bounds else {})}
            if query:
                params["query"] = json.dumps(query)
            if fields is not None:
                params["fields"] = json.dumps(fields)
            page = self.get_json(f"api/v2/assets/{uid}/data/", params, read=read_page)
            if page is None:
                raise ServerUnavailable(f"la page de données du projet {uid} n'a pas de liste 'results'",
                                        f"the data page of project {uid} has no 'results' list")
            if page.size:
                fitting = max(1, min(self.page_size, page.size * PAGE_BYTES // max(1, len(page.body))))
                if len(page.body) > 2 * PAGE_BYTES and fitting < page.size:
                    log.info("KoboToolbox : une page de %d soumissions fait %.0f Mo ; demande de %d à la fois / "
                             "a page of %d submissions is %.0f MB; asking for %d at a time",
                             page.size, len(page.body) / 2**20, fitting, page.size, len(page.body) / 2**20, fitting)
                    limit = fitting
                    continue
                if limit < self.page_size:  # pages of long submissions: kept near PAGE_BYTES
                    limit = fitting
            previous, last = last, page.last_id if page.last_id is not None else last
            yield replace(page, last_id=last)
            if not page.size or not page.more:
                return
            if last == previous:  # a page without one usable _id: paging on would repeat it forever
                log.warning("KoboToolbox : une page du projet %s n'a pas d'_id utilisable ; arrêt ici / a page of "
                            "project %s has no usable _id; stopping there", uid, uid)
                return


def _unsent(fr: str, en: str) -> ServerUnavailable:
    error = ServerUnavailable(fr, en)
    error.not_sent = True  # the request never reached the server: safe to send again
    return error


def _connection_never_opened(error: requests.ConnectionError) -> bool:
    """True when urllib3 failed to open the TCP connection (refused, DNS, unreachable),
    so no byte of the request was sent."""
    from urllib3.exceptions import NewConnectionError

    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError)


def _certificate_refused(error: Exception, where: str) -> KoboError | None:
    """A clear, final error when the server's TLS certificate failed verification (asking
    again will not change the certificate), else None (other TLS failures stay transient)."""
    if not isinstance(error, requests.exceptions.SSLError):
        return None
    seen, pending = set(), [error]
    while pending:  # requests' SSLError > urllib3's MaxRetryError > urllib3's SSLError > ssl's error
        cause = pending.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            host = urlsplit(where).netloc
            why = cause.verify_message or cause.reason
            return KoboError(f"le certificat TLS de {host} n'a pas pu être vérifié ({why}) : vérifiez l'adresse "
                             f"du serveur ; si le serveur a sa propre autorité de certification, donnez à "
                             f"REQUESTS_CA_BUNDLE le fichier de certificat (PEM) de cette autorité",
                             f"the TLS certificate of {host} could not be verified ({why}): check the server "
                             f"address; if the server uses a certificate authority of its own, set "
                             f"REQUESTS_CA_BUNDLE to that authority's certificate file (PEM)")
        pending += [getattr(cause, "reason", None), cause.__cause__, cause.__context__,
                    *(a for a in getattr(cause, "args", ()) if isinstance(a, BaseException))]
    return None


def _raise_for_status(response: requests.Response, method: str, where: str, idempotent: bool) -> None:
    status = response.status_code
    if status == 429:
        error = _unsent(f"le serveur a répondu 429 (trop de requêtes) pour {where}",
                        f"the server answered 429 (too many requests) for {where}")
        retry_after = response.headers.get("Retry-After", "")
        error.retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
        raise error
    if status >= 500:
        if method in ("GET", "HEAD") or idempotent:
            raise ServerUnavailable(f"le serveur a répondu {status} pour {where}",
                                    f"the server answered {status} for {where}")
        raise ServerUnavailable(f"le serveur a répondu {status} à un {method} vers {where} : la requête a pu "
                                f"être traitée en partie, elle n'a donc pas été renvoyée",
                                f"the server answered {status} for a {method} to {where}: it may have "
                                f"been processed in part, so it was not retried")
    if status >= 400:
        raise _terminal_error(status, _detail(response), where)


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
        return TokenRejected("KoboToolbox refuse le jeton (401) : vérifiez KOBO_TOKEN, et qu'il appartient à un "
                             "compte de ce serveur",
                             "KoboToolbox rejected the token (401): check KOBO_TOKEN and that it belongs "
                             "to an account on this server")
    if status == 403:
        return PermissionDenied(f"le compte n'a pas le droit de faire cela sur {where} (403) : demandez la "
                                f"permission au propriétaire du projet. Le serveur dit : {detail}",
                                f"the account may not do this on {where} (403): ask the project owner for "
                                f"the permission. Server said: {detail}")
    if status == 404:
        return ProjectNotFound(f"projet introuvable à {where} (404) : vérifiez l'uid du projet, ou partagez le "
                               f"projet avec le compte du jeton",
                               f"project not found at {where} (404): check the project uid, or share the "
                               f"project with the token's account")
    if status == 410:
        return ApiGone(f"{where} a été retiré de KoboToolbox (410) : {detail}",
                       f"{where} was removed from KoboToolbox (410): {detail}")
    if status == 400 and "not been deployed" in detail:
        return NotDeployed(f"le projet à {where} n'est pas déployé (400) : déployez-le d'abord dans KoboToolbox",
                           f"the project at {where} is not deployed (400): deploy it in KoboToolbox first")
    return BadRequest(f"KoboToolbox refuse la requête vers {where} ({status}) : {detail}",
                      f"KoboToolbox refused the request to {where} ({status}): {detail}")

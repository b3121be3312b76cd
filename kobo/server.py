"""A local KoboToolbox-compatible server on 127.0.0.1, for the demo and the tests.

It follows ../shared/kobo-api.md (the real API as read from kpi): token and Basic auth
and ``/token/`` (§1), the asset list and detail (§2), and ``/data/`` with kpi's paging,
silent limit cap, ``query``/``sort``/``fields`` and flat string documents (§3, §4).
Single submissions can be read and deleted, one by one or in bulk (§3.7), their
validation statuses read and set (§7), and their attachments downloaded, with HTTP
ranges so a cut download can resume (§4.3, §5). ``new_style=False`` switches to older
servers: page size default and cap 30000, no default sort, ``_tags``/``_notes`` in
documents, no rootUuid lookups.

Forms are created and deployed as kpi does (§6.2, §6.3): ``POST /api/v2/imports/``
takes a multipart XLSForm upload and finishes asynchronously (polled with
``GET /api/v2/imports/{uid}/``), and ``/api/v2/assets/{uid}/deployment/`` deploys
(POST), redeploys or archives (PATCH) and describes (GET) a deployment.

Tests steer it with Python methods (``add_submissions``, ``edit_submission``,
``delete_submission``, ``faults``...) or the same over HTTP under ``/__terrain__/``,
which is not part of the KoboToolbox API. A ``FaultPlan`` injects 500, 502, 429,
hung requests, truncated bodies, connection resets and latency into ``/api/`` and
``/token/`` requests, never into ``/__terrain__/``.
"""

from __future__ import annotations

import base64
import bisect
import email.parser
import email.policy
import hashlib
import io
import json
import mimetypes
import random
import re
import secrets
import socket
import struct
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from forms.dictionary import FieldDictionary

NEW_DEFAULT_LIMIT, NEW_MAX_LIMIT = 100, 1000
OLD_LIMIT = 30000
ALLOWED_OPERATORS = {"$or", "$and", "$in", "$nin", "$not", "$exists", "$gt", "$gte", "$lt", "$lte",
                     "$regex", "$options", "$all", "$elemMatch", "$ne", "$expr", "$ifNull"}
# kpi's uids are shortuuid strings: this alphabet leaves out look-alike characters (0/O, 1/l/I).
UID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SERVER_ERROR_HTML = b"\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n" \
                    b"<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
BAD_GATEWAY_HTML = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n" \
                   b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
DEFAULT_OWNER = "terrain_demo"
# kpi's DEFAULT_VALIDATION_STATUSES (kobo-api.md §7).
VALIDATION_LABELS = {"validation_status_approved": "Approved", "validation_status_not_approved": "Not Approved",
                     "validation_status_on_hold": "On Hold"}
# Question types whose answer is a file name, listed in ``_attachments`` (§4.3); ``photo`` is
# pyxform's alias of ``image``, ``audit`` the meta question whose file is audit.csv.
MEDIA_TYPES = frozenset({"image", "photo", "audio", "video", "file", "background-audio", "audit"})
# Attachment URLs are built before the server's address is known (the generator writes
# them with this placeholder); a server puts its own address in when it adopts an asset.
BASE_PLACEHOLDER = "__BASE__"
ATTACHMENT_URL_KEYS = ("download_url", "download_large_url", "download_medium_url", "download_small_url")
THUMBNAILS = ("large", "medium", "small")
MIMETYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".csv": "text/csv",
             ".m4a": "audio/mp4", ".amr": "audio/amr", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
             ".wav": "audio/x-wav", ".mp4": "video/mp4", ".3gp": "video/3gpp", ".pdf": "application/pdf"}
_UUID = re.compile(r"^[a-z\d]{8}-([a-z\d]{4}-){3}[a-z\d]{12}$")
# Set by the server on every submission; an edit or an added submission cannot choose them.
SERVER_KEYS = frozenset({"formhub/uuid", "meta/rootUuid", "meta/deprecatedID", "meta/instanceID"})
OLD_STYLE_KEYS = b',"_tags":[],"_notes":[]}'
FAULT_KINDS = ("500", "502", "429", "timeout", "truncated", "reset")
GENERATED_INDEX_BASE = 1_000_000  # generator indexes of added submissions: far from the seeded 0..n


def random_uid(prefix: str, length: int = 21) -> str:
    """A fresh kpi-style uid: ``a`` + 21 characters for assets, ``v`` for versions, ``i`` for imports."""
    return prefix + "".join(secrets.choice(UID_ALPHABET) for _ in range(length))


def stable_uid(prefix: str, text: str, length: int = 21) -> str:
    """A kpi-style uid that depends only on ``text``, so generated data stays deterministic."""
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(UID_ALPHABET))
        chars.append(UID_ALPHABET[index])
    return prefix + "".join(chars)


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong on ``/api/`` and ``/token/`` requests, so a client meets what real
    networks and servers do: a share ``rate`` of requests fails with one of ``kinds``, and
    every request waits ``latency_seconds`` first.

    Kinds: ``500`` (Django's HTML error page), ``502`` (nginx's), ``429`` (with
    ``Retry-After: retry_after``), ``timeout`` (hangs ``timeout_seconds`` and closes without
    answering), ``truncated`` (the full Content-Length, half the body, then the connection
    closes) and ``reset`` (the connection is reset without any answer).

    Faults are drawn from ``random.Random(seed)``, so a run is reproducible for a given
    order of requests. They are bounded: the same request (method and URL) never fails
    more than ``max_in_a_row`` times running, so a client that retries enough gets through.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    latency_seconds: float = 0.0
    timeout_seconds: float = 3.0
    retry_after: int = 1
    seed: int = 0
    max_in_a_row: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds))
        unknown = [kind for kind in self.kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}: choose among {list(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"the fault rate must be between 0 and 1, not {self.rate}")
        if self.latency_seconds < 0 or self.timeout_seconds < 0 or self.retry_after < 0 or self.max_in_a_row < 0:
            raise ValueError("latency_seconds, timeout_seconds, retry_after and max_in_a_row cannot be negative")

    @classmethod
    def from_json(cls, body: Any) -> "FaultPlan":
        if not isinstance(body, dict):
            raise ValueError("a fault plan is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(body) - known)
        if unknown:
            raise ValueError(f"unknown fault plan fields {unknown}: use {sorted(known)}")
        return cls(**body)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kinds": list(self.kinds)}


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
    owner: str = DEFAULT_OWNER
    deployed: bool = True  # kpi's has_deployment
    submissions: list[dict[str, Any]] = field(default_factory=list)
    asset_type: str = "survey"  # survey | block | question | template | empty
    active: bool = True  # False: deployed but archived
    deployed_versions: list[str] = field(default_factory=list)  # newest first
    version_contents: dict[str, dict[str, Any]] = field(default_factory=dict)  # every version's content
    _ids: list[int] = field(default_factory=list, repr=False)
    _encoded: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.submissions.sort(key=lambda s: s["_id"])
        self._ids = [s["_id"] for s in self.submissions]
        if self.deployed and not self.deployed_versions:
            self.deployed_versions = [self.version_uid]
        self.version_contents.setdefault(self.version_uid, self.content)

    def new_version(self, content: dict[str, Any]) -> None:
        """kpi: every content change is a new version, and old versions stay readable."""
        self.content = content
        self.version_uid = random_uid("v")
        self.version_contents[self.version_uid] = content

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

    def get(self, submission_id: int) -> dict[str, Any] | None:
        position = bisect.bisect_left(self._ids, submission_id)
        if position < len(self._ids) and self._ids[position] == submission_id:
            return self.submissions[position]
        return None

    def add(self, submission: dict[str, Any]) -> None:
        position = bisect.bisect_left(self._ids, submission["_id"])
        self._ids.insert(position, submission["_id"])
        self.submissions.insert(position, submission)
        self._encoded.pop(submission["_id"], None)

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


def _id_range(query: dict[str, Any]) -> tuple[tuple[int, bool] | None, tuple[int, bool] | None] | None:
    """The fast path for keyset paging and ``_id`` ranges: a query that is only bounds on
    ``_id`` ($gt or $gte, $lt or $lte, integers); (low, high), each (value, inclusive) or None."""
    bounds = query.get("_id") if set(query) == {"_id"} else None
    if not isinstance(bounds, dict) or not bounds or not set(bounds) <= {"$gt", "$gte", "$lt", "$lte"}:
        return None
    if any(not isinstance(v, int) or isinstance(v, bool) for v in bounds.values()):
        return None
    if {"$gt", "$gte"} <= set(bounds) or {"$lt", "$lte"} <= set(bounds):
        return None
    low = next(((bounds[op], op == "$gte") for op in ("$gt", "$gte") if op in bounds), None)
    high = next(((bounds[op], op == "$lte") for op in ("$lt", "$lte") if op in bounds), None)
    return low, high


# -- what the server derives from the form and the answers (kobo-api.md §4.2, §4.3) -------
@dataclass(frozen=True)
class Question:
    """One question of an asset's content: its key in submissions and its type."""

    key: str  # the flat ``/``-joined path, e.g. "household/hh_size", "meta/audit"
    kind: str
    in_repeat: bool


def content_questions(content: dict[str, Any]) -> list[Question]:
    """The questions of kpi ``content`` in form order, with the keys submissions use.
    Groups and repeats are flat begin/end rows; pyxform puts ``audit`` under ``meta``."""
    stack: list[tuple[str, bool]] = []
    questions = []
    for row in content.get("survey") or []:
        kind = str(row.get("type", "")).strip().replace(" ", "_")
        name = row.get("name") or row.get("$autoname")
        if kind in ("begin_group", "begin_repeat"):
            stack.append((str(name or ""), kind == "begin_repeat"))
        elif kind in ("end_group", "end_repeat"):
            if stack:
                stack.pop()
        elif name:
            path = ["meta", "audit"] if kind == "audit" else [n for n, _ in stack if n] + [str(name)]
            questions.append(Question("/".join(path), kind, any(repeat for _, repeat in stack)))
    return questions


def media_answers(answers: dict[str, Any], media_keys: set[str] | frozenset[str], parent_key: str = "",
                  parent_xpath: str = "") -> Iterator[tuple[str, str]]:
    """(question_xpath, file name) of each media answer, repeats walked with kpi's 1-based
    indices on every level, e.g. ``grp/rpt[1]/inner[2]/photo``."""
    for key, value in answers.items():
        if key.startswith("_"):
            continue
        relative = key[len(parent_key) + 1:] if parent_key and key.startswith(parent_key + "/") else key
        xpath = f"{parent_xpath}/{relative}" if parent_xpath else relative
        if isinstance(value, list):
            for position, row in enumerate(value, 1):
                if isinstance(row, dict):
                    yield from media_answers(row, media_keys, key, f"{xpath}[{position}]")
        elif key in media_keys and isinstance(value, str) and value:
            yield xpath, value


def mimetype_of(basename: str) -> str:
    suffix = Path(basename).suffix.lower()
    return MIMETYPES.get(suffix) or mimetypes.guess_type(basename)[0] or "application/octet-stream"


def attachments_for(answers: dict[str, Any], media_keys: set[str] | frozenset[str], *, base: str, asset_uid: str,
                    submission_id: int, owner: str, formhub_uuid: str, root_uuid: str) -> list[dict[str, Any]]:
    """The ``_attachments`` kpi lists for these answers (§4.3). The uid depends only on the
    asset, the submission's root uuid, the question and the file name, so an edit that keeps
    a file keeps its attachment."""
    root = root_uuid.removeprefix("uuid:")
    attachments = []
    for xpath, basename in media_answers(answers, media_keys):
        uid = stable_uid("att", f"{asset_uid}:{root}:{xpath}:{basename}")
        mimetype = mimetype_of(basename)
        url = f"{base}/api/v2/assets/{asset_uid}/data/{submission_id}/attachments/{uid}/"
        entry: dict[str, Any] = {"download_url": url}
        if mimetype.startswith("image/"):  # kpi drops the thumbnail URLs of anything else
            entry.update({f"download_{size}_url": f"{url}{size}/" for size in THUMBNAILS})
        stored_name = re.sub(r"(?u)[^-\w.]", "", basename.strip().replace(" ", "_"))  # Django's get_valid_filename
        entry.update({"mimetype": mimetype, "filename": f"{owner}/attachments/{formhub_uuid}/{root}/{stored_name}",
                      "media_file_basename": basename, "uid": uid, "question_xpath": xpath, "is_deleted": False})
        attachments.append(entry)
    return attachments


def geolocation_of(answers: dict[str, Any], questions: list[Question]) -> list[float | None]:
    """``_geolocation``: the first answered geopoint outside repeats, in form order (§4.2)."""
    for question in questions:
        if question.kind == "geopoint" and not question.in_repeat and answers.get(question.key):
            try:
                latitude, longitude = (float(x) for x in str(answers[question.key]).split()[:2])
            except ValueError:
                continue
            return [latitude, longitude]
    return [None, None]


# -- attachment files: small, valid and deterministic -----------------------------------
@lru_cache(maxsize=8)
def attachment_body(asset_uid: str, attachment_uid: str, mimetype: str, size: int) -> bytes:
    """The bytes of one attachment, about ``size`` long, that depend only on the arguments:
    a valid JPEG or PNG for images (an 8x8 picture padded with comment data), an ODK audit
    log for CSV, pseudo-random bytes for anything else."""
    key = f"{asset_uid}:{attachment_uid}:{size}".encode()
    if mimetype == "image/jpeg":
        return _jpeg(key, size)
    if mimetype == "image/png":
        return _png(key, size)
    if mimetype.startswith("text/"):
        return _audit_csv(key, size)
    return hashlib.shake_256(key).digest(size)


def _filler(key: bytes, length: int) -> bytes:
    return hashlib.shake_256(key).hexdigest(max(length, 0) // 2 + 1).encode()[:max(length, 0)]


def _jpeg(key: bytes, size: int) -> bytes:
    """A baseline grey 8x8 JPEG of one shade: only a DC coefficient, with one-code Huffman
    tables, so it is written by hand; COM segments bring it to ``size``."""
    dc = 8 * (hashlib.sha256(key).digest()[0] % 31 - 15)  # an even grey: F(0,0) = 8 * (sample - 128)
    category = abs(dc).bit_length()
    bits = "0" + (format(dc if dc > 0 else dc + (1 << category) - 1, f"0{category}b") if category else "") + "0"
    bits += "1" * (-len(bits) % 8)
    scan = b"".join(b"\xff\x00" if byte == 0xFF else bytes([byte])
                    for byte in (int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)))
    head = (b"\xff\xdb\x00\x43\x00" + b"\x01" * 64  # DQT: every step 1
            + b"\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"  # SOF0: 8x8, one component
            + b"\xff\xc4\x00\x26" + b"\x00\x01" + b"\x00" * 15 + bytes([category])  # DHT: DC, one code
            + b"\x10\x01" + b"\x00" * 15 + b"\x00"  # AC: one code, end of block
            + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00")  # SOS
    tail = scan + b"\xff\xd9"
    room = size - 2 - len(head) - len(tail)
    filler = _filler(key, room)
    padding = bytearray()
    while room >= 4:
        length = min(room - 4, 65533)
        padding += b"\xff\xfe" + struct.pack(">H", length + 2) + filler[:length]
        filler = filler[length:]
        room -= length + 4
    return b"\xff\xd8" + bytes(padding) + head + tail


def _png(key: bytes, size: int) -> bytes:
    """An 8x8 PNG of one colour, brought to ``size`` with a tEXt chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = hashlib.sha256(key).digest()[:3]
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + colour * 8 for _ in range(8))))
    end = chunk(b"IEND", b"")
    room = size - 8 - len(header) - len(pixels) - len(end) - 12 - len(b"Comment\x00")
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"tEXt", b"Comment\x00" + _filler(key, room)) + pixels + end


def _audit_csv(key: bytes, size: int) -> bytes:
    """An ODK audit log (event,node,start,end) of about ``size`` bytes."""
    rng = random.Random(key)
    moment = 1_788_000_000_000 + rng.randrange(10 ** 9)
    lines = ["event,node,start,end", f"form start,,{moment},"]
    length = sum(len(line) + 1 for line in lines)
    while length < size:
        took = rng.randrange(800, 60_000)
        line = f"question,/data/q{rng.randrange(1, 60)},{moment},{moment + took}"
        moment += took + rng.randrange(0, 3000)
        lines.append(line)
        length += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def _byte_range(header: str, total: int) -> tuple[int, int] | None:
    """The (first, last) bytes of a single ``Range: bytes=...`` header; None to ignore it
    (malformed or several ranges: RFC 9110 lets a server answer 200 with everything).
    Raises a 416 ApiError when it starts past the end."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last N bytes
        first, last = max(total - int(match[2]), 0), total - 1
    else:
        first = int(match[1])
        last = min(int(match[2]), total - 1) if match[2] else total - 1
        if match[2] and int(match[2]) < first:
            return None
    if first >= total or total == 0:
        raise ApiError(416, {"detail": "Requested range not satisfiable."}, {"Content-Range": f"bytes */{total}"})
    return first, last


class LocalKoboServer:
    """Serves assets over HTTP on 127.0.0.1 in a background thread.

    Use as a context manager, or call ``start()`` and ``stop()``. ``tokens`` maps API keys
    to usernames and ``passwords`` usernames to passwords (Basic auth, ``/token/``).
    ``faults`` (a FaultPlan, also settable later) injects failures; ``attachment_size`` is
    the size in bytes of each attachment's original file.
    """

    def __init__(self, tokens: dict[str, str], assets: list[ServedAsset] | None = None,
                 new_style: bool = True, host: str = "127.0.0.1", port: int = 0, prefix: str = "",
                 import_polls: int = 1, passwords: dict[str, str] | None = None,
                 faults: FaultPlan | None = None, attachment_size: int = 4096):
        self.tokens = dict(tokens)
        self.passwords = dict(passwords or {})
        self.assets: dict[str, ServedAsset] = {}
        self.new_style = new_style
        self.prefix = prefix.rstrip("/")
        self.lock = threading.RLock()
        self.requests_served = 0
        self.attachment_size = attachment_size
        # Imports run "in the background" as kpi's Celery task does: a task answers
        # "processing" to its first ``import_polls`` GETs and is processed on the next one.
        self.imports: dict[str, ImportTask] = {}
        self.import_polls = import_polls
        self.faults_injected: dict[str, int] = {kind: 0 for kind in FAULT_KINDS}
        self.faults = faults or FaultPlan()
        self._stopping = threading.Event()  # wakes requests that hang (latency, timeouts) at stop()
        self._last_id = 0  # Postgres never reuses a pk, even after deletes
        self._generated: dict[str, int] = {}  # submissions generated per asset by generate_submissions
        self._dictionaries: dict[tuple[str, str], FieldDictionary] = {}
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        for asset in assets or []:
            self.add_asset(asset)

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

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        """A new plan restarts its random sequence; ``faults_injected`` keeps counting."""
        with self.lock:
            self._faults = plan or FaultPlan()
            self._fault_random = random.Random(self._faults.seed)
            self._fault_streaks: dict[str, int] = {}

    def start(self) -> "LocalKoboServer":
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-kobo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LocalKoboServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_asset(self, asset: ServedAsset) -> ServedAsset:
        """Serves ``asset``; attachment URLs written with BASE_PLACEHOLDER get this server's address."""
        with self.lock:
            for document in asset.submissions:
                self._resolve_urls(document)
            asset._encoded.clear()
            self.assets[asset.uid] = asset
            if asset._ids:
                self._last_id = max(self._last_id, asset._ids[-1])
        return asset

    def _resolve_urls(self, document: dict[str, Any]) -> None:
        for attachment in document.get("_attachments") or ():
            for key in ATTACHMENT_URL_KEYS:
                url = attachment.get(key)
                if isinstance(url, str) and url.startswith(BASE_PLACEHOLDER):
                    attachment[key] = self.url + url[len(BASE_PLACEHOLDER):]

    def rebase(self, payload: bytes, base: str) -> bytes:
        """Stored attachment URLs carry this server's own address; kpi writes them with the host
        the client used, so they are rewritten when that differs (a bytes replace, no re-encoding)."""
        if base == self.url:
            return payload
        own, theirs = (json.dumps(f"{url}/api/")[:-1].encode() for url in (self.url, base))
        return payload.replace(own, theirs)

    # -- faults -------------------------------------------------------------------------
    def draw_fault(self, request_key: str) -> str | None:
        """The fault to inject into this request, if any (see FaultPlan), counted per kind."""
        with self.lock:
            plan = self._faults
            if plan.rate <= 0 or not plan.kinds:
                return None
            streak = self._fault_streaks.get(request_key, 0)
            if self._fault_random.random() >= plan.rate or streak >= plan.max_in_a_row:
                self._fault_streaks.pop(request_key, None)
                return None
            kind = self._fault_random.choice(plan.kinds)
            self._fault_streaks[request_key] = streak + 1
            self.faults_injected[kind] += 1
            return kind

    def pause(self, seconds: float) -> None:
        """Sleeps, unless the server stops meanwhile."""
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- the API ------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> tuple[str | None, dict[str, str] | None]:
        """(username, None), (None, None) for anonymous callers, or (None, the 401 body) for
        credentials DRF rejects: a bad token (§1.4) or a bad Basic username/password."""
        if not authorization:
            return None, None
        keyword, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if keyword.lower() == "token":
            if not credentials:
                return None, {"detail": "Invalid token header. No credentials provided."}
            if " " in credentials:
                return None, {"detail": "Invalid token header. Token string should not contain spaces."}
            user = self.tokens.get(credentials)
            return (user, None) if user else (None, {"detail": "Invalid token."})
        if keyword.lower() == "basic":
            try:
                username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, {"detail": "Invalid basic header. Credentials not correctly base64 encoded."}
            if username in self.passwords and secrets.compare_digest(self.passwords[username], password):
                return username, None
            return None, {"detail": "Invalid username/password."}
        return None, None  # a scheme no authentication class claims: anonymous, as in DRF

    def token_for(self, user: str, create: bool = True) -> tuple[str | None, bool]:
        """(the user's API key, created): kpi's ``/token/`` creates one when there is none."""
        with self.lock:
            key = next((k for k, u in self.tokens.items() if u == user), None)
            if key is None and create:
                key = secrets.token_hex(20)
                self.tokens[key] = user
                return key, True
            return key, False

    def delete_token(self, user: str) -> None:
        with self.lock:
            for key in [k for k, u in self.tokens.items() if u == user]:
                del self.tokens[key]

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

    def versions(self, asset: ServedAsset, version_uid: str, base: str) -> dict[str, Any]:
        """``/versions/`` (a list) or ``/versions/{uid}/`` (one version with its content)."""
        def item(uid: str) -> dict[str, Any]:
            return {"uid": uid, "url": f"{base}/api/v2/assets/{asset.uid}/versions/{uid}/",
                    "date_deployed": None, "content_hash": None}

        if not version_uid:
            uids = list(reversed(asset.version_contents))
            return {"count": len(uids), "next": None, "previous": None, "results": [item(u) for u in uids]}
        if version_uid not in asset.version_contents:
            raise ApiError(404, {"detail": "Not found."})
        return {**item(version_uid), "content": asset.version_contents[version_uid]}

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

    def document_bytes(self, asset: ServedAsset, document: dict[str, Any]) -> bytes:
        """One served document from the encoded cache; older servers also send ``_tags`` and
        ``_notes`` (§0), spliced in so one cache serves both styles."""
        encoded = asset.encoded(document)
        return encoded if self.new_style else encoded[:-1] + OLD_STYLE_KEYS

    def data_page(self, asset: ServedAsset, params: dict[str, str], path: str, base: str | None = None) -> bytes:
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
            bounds = _id_range(query) if sort in ({"_id": 1}, {}) else None
            if bounds is not None:
                low, high = bounds
                first = 0 if low is None else (bisect.bisect_left if low[1] else bisect.bisect_right)(asset._ids, low[0])
                end = (len(documents) if high is None
                       else (bisect.bisect_right if high[1] else bisect.bisect_left)(asset._ids, high[0]))
                total = max(0, end - first)
                page = documents[first + start: max(first + start, min(first + start + limit, end))]
            else:
                selected = [d for d in documents if matches(d, query)] if query else list(documents)
                for key, direction in reversed(list(sort.items())):
                    selected.sort(key=lambda d, k=key: _sort_key(d.get(k)), reverse=direction == -1)
                total = len(selected)
                page = selected[start:start + limit]
            if fields is None:
                encoded = [self.document_bytes(asset, d) for d in page]
            else:
                wanted = set(fields) | {"_uuid", "meta/rootUuid"}
                extra = {} if self.new_style else {"_tags": [], "_notes": []}
                encoded = [json.dumps({**{k: v for k, v in {**d, **extra}.items() if k in wanted},
                                       "_validation_status": d.get("_validation_status", {})},
                                      ensure_ascii=False, separators=(",", ":")).encode() for d in page]
        envelope = _envelope(path, params, total, start, limit, None)
        head = json.dumps({k: envelope[k] for k in ("count", "next", "previous")}).encode()[:-1]
        page_bytes = head + b',"results":[' + b",".join(encoded) + b"]}"
        return page_bytes if base is None else self.rebase(page_bytes, base)

    # -- single submissions, deletes and validation statuses (§3.1, §3.7, §7) ------------
    def asset_or_404(self, asset_uid: str) -> ServedAsset:
        asset = self.assets.get(asset_uid)
        if asset is None:
            raise ApiError(404, {"detail": "Not found."})
        return asset

    def find_submission(self, asset: ServedAsset, ident: int | str, by_uuid: bool = False) -> dict[str, Any] | None:
        """kpi's ``{id}`` lookup: the integer ``_id``, or on newer servers (PR #6660) the
        rootUuid without ``uuid:``; ``by_uuid`` also matches ``_uuid`` (the retrieve and
        attachment routes allow it), the first one found."""
        text = str(ident)
        if text.isdigit():
            return asset.get(int(text))
        if not _UUID.match(text):
            return None
        root = f"uuid:{text}"
        for document in asset.submissions:
            if self.new_style and document.get("meta/rootUuid") == root:
                return document
            if by_uuid and document.get("_uuid") == text:
                return document
        return None

    def submission_or_404(self, asset: ServedAsset, ident: int | str, by_uuid: bool = False) -> dict[str, Any]:
        document = self.find_submission(asset, ident, by_uuid)
        if document is None:
            raise ApiError(404, {"detail": "Not found."})
        return document

    def delete_submission(self, asset_uid: str, submission_id: int | str) -> None:
        """A hard delete, as kpi's (no tombstone). Raises ApiError 404 if there is no such submission."""
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            asset.delete(self.submission_or_404(asset, submission_id)["_id"])

    def delete_submissions(self, asset_uid: str, payload: dict[str, Any]) -> int:
        """``DELETE /data/bulk/``: ``payload`` as kpi's (``submission_ids``, ``query`` or
        ``confirm``); how many were deleted."""
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            targets = self.bulk_targets(asset, payload, needs_status=False)
            for document in targets:
                asset.delete(document["_id"])
            return len(targets)

    def bulk_targets(self, asset: ServedAsset, payload: Any, needs_status: bool) -> list[dict[str, Any]]:
        """The submissions a bulk action applies to, after kpi's checks: its
        DataBulkActionsValidator (400 ``{"payload": [message]}``), then the ids, which must
        all belong to this asset (400 ``{"detail": "One or more submission ids are invalid"}``).
        ``submission_ids`` wins over ``query``, as in kpi's validator."""
        payload = _payload(payload)
        if "submission_ids" in payload:
            try:
                ids = list(dict.fromkeys(int(i) for i in payload["submission_ids"]))
            except (TypeError, ValueError):
                raise ApiError(400, {"payload": ["`submission_ids` must only contain integer values"]}) from None
            if not ids:
                raise ApiError(400, {"payload": ["`submission_ids` must contain at least one value"]})
        elif "query" not in payload and not payload.get("confirm"):
            raise ApiError(400, {"payload": ["Confirmation is required"]})
        if needs_status and "validation_status.uid" not in payload:
            raise ApiError(400, {"payload": ["`validation_status.uid` is required"]})
        if "submission_ids" in payload:
            found = [asset.get(i) for i in ids]
            if any(document is None for document in found):
                raise ApiError(400, {"detail": "One or more submission ids are invalid"})
            return [d for d in found if d is not None]
        if "query" in payload:
            query = payload["query"]
            if isinstance(query, str):
                try:
                    query = json.loads(query)
                except ValueError:
                    raise ApiError(400, {"query": "Value must be valid JSON."}) from None
            if not isinstance(query, dict):
                raise ApiError(400, ["Unsupported query"])
            return [d for d in asset.submissions if matches(d, query)]
        return list(asset.submissions)

    def validation_status(self, asset_uid: str, submission_id: int | str) -> dict[str, Any]:
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            return self.submission_or_404(asset, submission_id).get("_validation_status") or {}

    def set_validation_status(self, asset_uid: str, submission_id: int | str, status_uid: str | None,
                              user: str) -> dict[str, Any]:
        """Single PATCH (§7): an unknown status is a 400; None clears it (DELETE). The new status."""
        if status_uid is not None and status_uid not in VALIDATION_LABELS:
            raise ApiError(400, {"detail": f"Invalid validation status: `{status_uid}`"})
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            document = self.submission_or_404(asset, submission_id)
            status = _status_object(status_uid, user)
            asset.replace({**document, "_validation_status": status})
            return status

    def set_validation_statuses(self, asset_uid: str, payload: dict[str, Any], user: str, clear: bool = False) -> int:
        """Bulk PATCH (§7), or DELETE with ``clear``: both need ``validation_status.uid``, but
        kpi does not check it, so an unknown one clears the statuses, as DELETE does whatever
        it says. How many submissions were updated."""
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            targets = self.bulk_targets(asset, payload, needs_status=True)
            status_uid = None if clear else _payload(payload).get("validation_status.uid")
            for document in targets:
                asset.replace({**document, "_validation_status": _status_object(status_uid, user)})
            return len(targets)

    # -- adding and editing submissions, as Collect or Enketo would (test control) -------
    def questions(self, asset: ServedAsset) -> list[Question]:
        return content_questions(asset.content)

    def add_submissions(self, asset_uid: str, answers: list[dict[str, Any]],
                        submitted_by: str | None = None) -> list[dict[str, Any]]:
        """Stores new submissions of Kobo-shaped answers (flat keys, string values, repeats
        as lists) with the system keys a real server adds (§4.2): a server-wide increasing
        ``_id``, new instance uuids, ``_submission_time`` now in UTC, the deployed
        ``__version__``, ``_attachments``, ``_geolocation``... An answer dict may bring its own
        ``meta/instanceID``, ``__version__``, ``_submission_time`` (backdated, as
        ``submissionDate`` allows) or ``_submitted_by``. Returns the stored documents."""
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            if not asset.deployed:
                raise ApiError(400, {"detail": "The specified asset has not been deployed"})
            questions = self.questions(asset)
            stored = [self._stamp(asset, questions, dict(a), submitted_by) for a in answers]
            for document in stored:
                asset.add(document)
            return stored

    def _stamp(self, asset: ServedAsset, questions: list[Question], answers: dict[str, Any],
               submitted_by: str | None) -> dict[str, Any]:
        instance = str(answers.pop("meta/instanceID", "") or "").removeprefix("uuid:") or str(uuid.uuid4())
        received = answers.pop("_submission_time", None) or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        version = answers.pop("__version__", None) or asset.deployed_version_id
        by = answers.pop("_submitted_by", submitted_by)
        answers = {k: v for k, v in answers.items() if v is not None and not k.startswith("_") and k not in SERVER_KEYS}
        self._last_id = max([self._last_id] + [a._ids[-1] for a in self.assets.values() if a._ids]) + 1
        document = {"_id": self._last_id, "formhub/uuid": asset.formhub_uuid, **answers, "__version__": version,
                    "meta/instanceID": f"uuid:{instance}", "meta/rootUuid": f"uuid:{instance}",
                    "_xform_id_string": asset.uid, "_uuid": instance}
        return self._with_derived_keys(asset, questions, document, {"_status": "submitted_via_web"}) | {
            "_submission_time": received, "_validation_status": {}, "_submitted_by": by}

    def _with_derived_keys(self, asset: ServedAsset, questions: list[Question], document: dict[str, Any],
                           between: dict[str, Any]) -> dict[str, Any]:
        """``document`` with ``_attachments`` and ``_geolocation`` computed from its answers."""
        media = frozenset(q.key for q in questions if q.kind in MEDIA_TYPES)
        answers = {k: v for k, v in document.items() if not k.startswith("_")}
        attachments = attachments_for(answers, media, base=self.url, asset_uid=asset.uid,
                                      submission_id=document["_id"], owner=asset.owner,
                                      formhub_uuid=asset.formhub_uuid, root_uuid=document["meta/rootUuid"])
        return {**document, "_attachments": attachments, **between, "_geolocation": geolocation_of(answers, questions)}

    def edit_submission(self, asset_uid: str, submission_id: int | str, changes: dict[str, Any]) -> dict[str, Any]:
        """An edit as in §3.6 (Enketo or a resubmission with ``deprecatedID``): ``changes``
        sets answers (None removes one); ``_id``, ``meta/rootUuid`` and ``_submission_time``
        stay, ``_uuid`` and ``meta/instanceID`` are new and ``meta/deprecatedID`` is the
        previous instanceID. ``__version__`` becomes the deployed version, as an Enketo edit
        does, unless ``changes`` sets it. Returns the new document."""
        for key in changes:
            if key in SERVER_KEYS or (key.startswith("_") and key != "__version__"):
                raise ApiError(400, {"detail": f"`{key}` is set by the server and cannot be edited"})
        with self.lock:
            asset = self.asset_or_404(asset_uid)
            old = self.submission_or_404(asset, submission_id)
            edited = {k: v for k, v in old.items() if k not in ("_attachments", "_geolocation")}
            for key, value in changes.items():
                if value is None:
                    edited.pop(key, None)
                else:
                    edited[key] = value
            instance = str(uuid.uuid4())
            edited.update({"__version__": changes.get("__version__") or asset.deployed_version_id,
                           "meta/instanceID": f"uuid:{instance}", "meta/deprecatedID": old["meta/instanceID"],
                           "_uuid": instance})
            system = {k: edited.pop(k) for k in list(edited) if k.startswith("_") and k != "__version__"
                      and k not in ("_id", "_xform_id_string", "_uuid")}
            status = {"_status": system.pop("_status", "submitted_via_web")}
            document = self._with_derived_keys(asset, self.questions(asset), edited, status) | system
            asset.replace(document)
            return document

    def generate_submissions(self, asset_uid: str, count: int, seed: int = 2026,
                             mistake_rate: float = 0.02) -> list[dict[str, Any]]:
        """Adds ``count`` submissions generated from the asset's form (kobo.generate), as if
        they had just arrived. Their generator indexes start far from the seeded ones and
        continue from one call to the next, so their uuids are new."""
        from kobo.generate import Deployment, SubmissionGenerator

        with self.lock:
            asset = self.asset_or_404(asset_uid)
            deployment = Deployment(asset.uid, asset.deployed_version_id or asset.version_uid, asset.formhub_uuid)
            generator = SubmissionGenerator(self.dictionary(asset), deployment, seed=seed, mistake_rate=mistake_rate)
            first = GENERATED_INDEX_BASE + self._generated.get(asset.uid, 0)
            self._generated[asset.uid] = self._generated.get(asset.uid, 0) + count
            generated = [generator.submission(first + i, 0) for i in range(count)]
            return self.add_submissions(asset_uid, [
                {k: v for k, v in g.items() if not k.startswith("_") or k == "_submitted_by"} for g in generated])

    def dictionary(self, asset: ServedAsset) -> "FieldDictionary":
        """The field dictionary of the asset's form: ours by form_id, else compiled from its content."""
        key = (asset.uid, asset.version_uid)
        if key not in self._dictionaries:
            from forms.build import dictionary_from_sheets, project_forms
            from kobo.content import xlsform_from_content

            built = project_forms().get(str((asset.content.get("settings") or {}).get("form_id")))
            self._dictionaries[key] = built.dictionary if built else dictionary_from_sheets(
                xlsform_from_content(asset.content), origin=asset.uid, form_name=asset.uid)
        return self._dictionaries[key]

    # -- attachments (§5) --------------------------------------------------------------
    def attachment_file(self, asset: ServedAsset, attachment: dict[str, Any], variant: str = "original") -> bytes:
        """The file of one attachment; image thumbnails are smaller files of the same picture."""
        size = self.attachment_size
        if variant in THUMBNAILS and attachment["mimetype"].startswith("image/"):
            size = size * {"large": 3, "medium": 2, "small": 1}[variant] // 4
        return attachment_body(asset.uid, attachment["uid"], attachment["mimetype"], size)

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
                asset.new_version(content)
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


def _payload(payload: Any) -> dict[str, Any]:
    """A bulk ``payload``: a JSON object, or a JSON string of one (kpi's WritableJSONField)."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError:
            raise ApiError(400, {"payload": ["Value must be valid JSON."]}) from None
    if not isinstance(payload, dict):
        raise ApiError(400, {"payload": ["Value must be valid JSON."]})
    return payload


def _status_object(status_uid: str | None, user: str) -> dict[str, Any]:
    """kpi's stored validation status; ``{}`` for None or an unknown uid (which clears it)."""
    if status_uid not in VALIDATION_LABELS:
        return {}
    return {"timestamp": int(time.time()), "uid": status_uid, "by_whom": user, "label": VALIDATION_LABELS[status_uid]}


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
# ``rest`` of an asset path (trailing slash removed) under ``data/``.
_DATA_ITEM = re.compile(r"^data/(?P<id>[^/.]+)(?:\.json)?(?:/(?P<sub>validation_status|attachments)"
                        r"(?:/(?P<att>[^/]+)(?:/(?P<variant>small|medium|large|original))?)?)?$")
_CONTROL_SUBMISSIONS = re.compile(r"^/__terrain__/assets/(?P<uid>[A-Za-z0-9]+)/submissions(?:/(?P<id>\d+))?/?$")
V1_GONE = {"detail": "The V1 API has been removed. Please read the migration article at "
                     "https://support.kobotoolbox.org/migrating_api.html"}
NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}


def _handler_for(server: LocalKoboServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: without TCP_NODELAY, Nagle and the
        # client's delayed ACK add 40 ms to every small answer.
        disable_nagle_algorithm = True
        server_version = "LocalKobo/1.0"
        truncate = False  # set by a "truncated" fault: the answer's body is cut

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and demo read their own logs
            pass

        # -- answering ----------------------------------------------------------------
        def send_bytes(self, status: int, payload: bytes, content_type: str = "application/json",
                       headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.truncate and payload:
                self.wfile.write(payload[:len(payload) // 2])  # the promised length never arrives
                self.close_connection = True
                return
            self.wfile.write(payload)

        def send_json(self, status: int, body: Any, raw: bytes | None = None, headers: dict | None = None) -> None:
            payload = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
            self.send_bytes(status, payload, headers=headers)

        def send_server_error(self) -> None:
            self.send_bytes(500, SERVER_ERROR_HTML, "text/html; charset=utf-8")

        def send_file(self, payload: bytes, mimetype: str, basename: str, etag: str) -> None:
            """A file as kpi's attachment view serves it, with byte ranges so downloads resume."""
            headers = {"Content-Disposition": f"attachment; filename={basename}", "Accept-Ranges": "bytes",
                       "ETag": etag}
            wanted = self.headers.get("Range")
            span = _byte_range(wanted, len(payload)) if wanted else None
            if span is not None and self.headers.get("If-Range", etag) == etag:
                first, last = span
                headers["Content-Range"] = f"bytes {first}-{last}/{len(payload)}"
                return self.send_bytes(206, payload[first:last + 1], mimetype, headers)
            self.send_bytes(200, payload, mimetype, headers)

        def answer(self, route: Any, *args: Any) -> None:
            try:
                route(*args)
            except BadRequest as error:
                self.send_json(400, error.body)
            except ApiError as error:
                self.send_json(error.status, error.body, headers=error.headers)
            except ServerError:
                self.send_server_error()

        # -- reading requests -----------------------------------------------------------
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

        def form_data(self, body: bytes) -> dict[str, Any]:
            return parse_form_data(self.headers.get("Content-Type", ""), body)

        def json_body(self, body: bytes) -> Any:
            try:
                return json.loads(body or b"null")
            except ValueError as error:
                raise ApiError(400, {"detail": f"JSON parse error - {error}"}) from None

        def handle_method(self, method: str) -> None:
            body = self.read_body()  # always read first, so a kept-alive connection stays in step
            with server.lock:
                server.requests_served += 1
            parts = urlsplit(self.path)
            path = parts.path
            if server.prefix:
                if not path.startswith(server.prefix + "/"):
                    return self.send_json(404, {"detail": "Not found."})
                path = path[len(server.prefix):]
            if path.startswith(("/api/", "/token")) and self.inject_fault(method):
                return
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            host, port = server._httpd.server_address[:2]
            base = f"http://{self.headers.get('Host') or f'{host}:{port}'}{server.prefix}"
            user, rejected = server.authenticate(self.headers.get("Authorization"))
            if rejected:
                return self.send_json(401, rejected, headers={"WWW-Authenticate": "Session"})
            self.answer(self.dispatch, method, path, params, base, user, body)

        def do_GET(self) -> None:
            self.handle_method("GET")

        def do_POST(self) -> None:
            self.handle_method("POST")

        def do_PATCH(self) -> None:
            self.handle_method("PATCH")

        def do_DELETE(self) -> None:
            self.handle_method("DELETE")

        def inject_fault(self, method: str) -> bool:
            """Waits the plan's latency, then injects a fault if one is drawn; True when the
            fault took the request over and nothing more may be sent."""
            plan = server.faults
            server.pause(plan.latency_seconds)
            kind = server.draw_fault(f"{method} {self.path}")
            if kind == "500":
                self.send_server_error()
            elif kind == "502":
                self.send_bytes(502, BAD_GATEWAY_HTML, "text/html")
            elif kind == "429":
                self.send_json(429, {"detail": f"Request was throttled. Expected available in {plan.retry_after} "
                                               f"second{'' if plan.retry_after == 1 else 's'}."},
                               headers={"Retry-After": str(plan.retry_after)})
            elif kind == "timeout":
                server.pause(plan.timeout_seconds)
                self.close_connection = True
            elif kind == "reset":
                # SO_LINGER with a zero timeout, closed before socketserver's shutdown(SHUT_WR)
                # could send a FIN: the client gets a TCP RST ("connection reset by peer").
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif kind == "truncated":
                self.truncate = True
                return False
            return kind is not None

        # -- routes ---------------------------------------------------------------------
        def dispatch(self, method: str, path: str, params: dict[str, str], base: str, user: str | None,
                     body: bytes) -> None:
            if path.startswith("/__terrain__/"):
                return self.control_route(method, path, user, body)
            if path in ("/token", "/token/"):
                return self.token_route(method, user)
            if path.startswith("/api/v1/"):
                return self.send_json(410, V1_GONE)
            if method == "GET":
                return self.route(path, params, base, user)
            return self.write_route(method, path, params, body, base, user)

        def token_route(self, method: str, user: str | None) -> None:
            """kpi's ``/token/`` (§1.2): any authentication; GET and POST create a key if needed."""
            if user is None:
                return self.send_json(401, NO_CREDENTIALS, headers={"WWW-Authenticate": "Session"})
            if method == "DELETE":
                server.delete_token(user)
                return self.send_bytes(204, b"")
            if method not in ("GET", "POST"):
                return self.send_json(405, {"detail": f'Method "{method}" not allowed.'})
            key, created = server.token_for(user)
            self.send_json(201 if created and method == "POST" else 200, {"token": key})

        def write_route(self, method: str, path: str, params: dict[str, str], body: bytes, base: str,
                        user: str | None) -> None:
            not_allowed = {"detail": f'Method "{method}" not allowed.'}
            if path == "/api/v2/imports/":
                if method != "POST":
                    return self.send_json(405, not_allowed)
                if user is None:
                    return self.send_json(401, NO_CREDENTIALS, headers={"WWW-Authenticate": "Session"})
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
            asset = server.assets.get(match["uid"])
            if asset is None or user is None:
                detail = "No Asset matches the given query." if (user and rest) else "Not found."
                return self.send_json(404, {"detail": detail})
            if rest.startswith("data/"):
                return self.data_route(method, asset, rest, params, base, user, body)
            if rest != "deployment" or method == "DELETE":
                known = rest in ("", "data", "deployment")
                return self.send_json(405 if known else 404, not_allowed if known else {"detail": "Not found."})
            fields = self.form_data(body)
            with server.lock:
                if method == "POST":
                    server.create_deployment(asset, fields)
                else:
                    server.update_deployment(asset, fields)
                deployment = server.deployment_body(asset, base)
            return self.send_json(200, deployment)

        def route(self, path: str, params: dict[str, str], base: str, user: str | None) -> None:
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
            if rest == "versions" or rest.startswith("versions/"):
                return self.send_json(200, server.versions(asset, rest.partition("/")[2], base))
            if rest in ("", ".json"):
                return self.send_json(200, server.asset_detail(asset, base))
            if rest in ("data", "data.json"):
                if not asset.deployed:
                    return self.send_json(400, {"detail": "The specified asset has not been deployed"})
                url = f"{base}/api/v2/assets/{asset.uid}/{'data/' if rest == 'data' else 'data.json'}"
                return self.send_json(200, None, raw=server.data_page(asset, params, url, base))
            if rest.startswith("data/"):
                return self.data_route("GET", asset, rest, params, base, user, b"")
            if rest == "deployment":
                with server.lock:
                    if not asset.deployed:
                        return self.send_json(404, {"detail": "Not found."})
                    return self.send_json(200, server.deployment_body(asset, base))
            return self.send_json(404, {"detail": "Not found."})

        def data_route(self, method: str, asset: ServedAsset, rest: str, params: dict[str, str], base: str,
                       user: str, body: bytes) -> None:
            """One submission, its validation status and attachments, and the bulk actions."""
            not_allowed = {"detail": f'Method "{method}" not allowed.'}
            if not asset.deployed:
                return self.send_json(400, {"detail": "The specified asset has not been deployed"})
            if rest in ("data/bulk", "data/validation_statuses"):
                if method not in ("DELETE", "PATCH") or (rest == "data/bulk" and method == "PATCH"):
                    return self.send_json(405, not_allowed)  # bulk PATCH (editing answers) is not simulated
                form = self.form_data(body)
                if "payload" not in form:
                    raise ApiError(400, {"payload": ["This field is required."]})
                if rest == "data/bulk":
                    deleted = server.delete_submissions(asset.uid, form["payload"])
                    return self.send_json(200, {"detail": f"{deleted} submissions have been deleted"})
                updated = server.set_validation_statuses(asset.uid, form["payload"], user, clear=method == "DELETE")
                return self.send_json(200, {"detail": f"{updated} submissions have been updated"})
            item = _DATA_ITEM.match(rest)
            if not item:
                return self.send_json(404, {"detail": "Not found."})
            ident, sub = item["id"], item["sub"]
            if sub is None:
                if method == "DELETE":
                    server.delete_submission(asset.uid, ident)
                    return self.send_bytes(204, b"")
                if method != "GET":
                    return self.send_json(405, not_allowed)
                with server.lock:
                    document = server.submission_or_404(asset, ident, by_uuid=True)
                    raw = server.rebase(server.document_bytes(asset, document), base)
                return self.send_json(200, None, raw=raw)
            if sub == "validation_status":
                if method == "GET":
                    return self.send_json(200, server.validation_status(asset.uid, ident))
                if method == "DELETE":
                    server.set_validation_status(asset.uid, ident, None, user)
                    return self.send_bytes(204, b"")
                status_uid = self.form_data(body).get("validation_status.uid")
                return self.send_json(200, server.set_validation_status(asset.uid, ident, status_uid, user))
            if method != "GET":
                return self.send_json(405, not_allowed)
            return self.attachment_route(asset, ident, item["att"], item["variant"] or "original", params)

        def attachment_route(self, asset: ServedAsset, ident: str, att: str | None, variant: str,
                             params: dict[str, str]) -> None:
            with server.lock:
                document = server.submission_or_404(asset, ident, by_uuid=True)
                attachments = document.get("_attachments") or []
            if att is None:
                if not params.get("xpath"):
                    raise ApiError(400, {"detail": "`xpath` query parameter is required"})
                attachment = next((a for a in attachments if a.get("question_xpath") == params["xpath"]), None)
                if attachment is None:
                    raise ApiError(400, {"detail": "The path could not be found in the submission"})
            else:
                attachment = next((a for a in attachments if a.get("uid") == att), None)
                if attachment is None:
                    raise ApiError(404, {"detail": "Not found."})
            payload = server.attachment_file(asset, attachment, variant)
            etag = f'"{attachment["uid"]}-{variant}-{len(payload)}"'
            self.send_file(payload, attachment["mimetype"], attachment["media_file_basename"], etag)

        def control_route(self, method: str, path: str, user: str | None, body: bytes) -> None:
            """Test control, not part of the KoboToolbox API: submissions, faults and behaviour."""
            if user is None:
                return self.send_json(401, NO_CREDENTIALS, headers={"WWW-Authenticate": "Session"})
            not_allowed = {"detail": f'Method "{method}" not allowed.'}
            if path.rstrip("/") == "/__terrain__/faults":
                if method == "POST":
                    try:
                        server.faults = FaultPlan.from_json(self.json_body(body))
                    except (TypeError, ValueError) as error:
                        raise ApiError(400, {"detail": str(error)}) from None
                elif method != "GET":
                    return self.send_json(405, not_allowed)
                return self.send_json(200, {"plan": server.faults.to_json(), "injected": dict(server.faults_injected)})
            if path.rstrip("/") == "/__terrain__/behaviour":
                if method == "POST":
                    wanted = self.json_body(body)
                    if not isinstance(wanted, dict) or not isinstance(wanted.get("new_style"), bool):
                        raise ApiError(400, {"detail": 'send {"new_style": true} or {"new_style": false}'})
                    server.new_style = wanted["new_style"]
                elif method != "GET":
                    return self.send_json(405, not_allowed)
                return self.send_json(200, {"new_style": server.new_style})
            match = _CONTROL_SUBMISSIONS.match(path)
            if not match:
                return self.send_json(404, {"detail": "Not found."})
            uid, submission_id = match["uid"], match["id"]
            if submission_id is None:
                if method != "POST":
                    return self.send_json(405, not_allowed)
                request = self.json_body(body)
                if isinstance(request, dict) and "generate" in request:
                    count, seed = request["generate"], request.get("seed", 2026)
                    if not isinstance(count, int) or count < 0 or not isinstance(seed, int):
                        raise ApiError(400, {"detail": '"generate" and "seed" must be integers'})
                    return self.send_json(201, server.generate_submissions(uid, count, seed=seed))
                if not isinstance(request, list) or not all(isinstance(a, dict) for a in request):
                    raise ApiError(400, {"detail": 'send a JSON list of answer objects, or {"generate": N, "seed": S}'})
                return self.send_json(201, server.add_submissions(uid, request, submitted_by=user))
            if method == "PATCH":
                changes = self.json_body(body)
                if not isinstance(changes, dict):
                    raise ApiError(400, {"detail": "send a JSON object of changed answers"})
                return self.send_json(200, server.edit_submission(uid, int(submission_id), changes))
            if method == "DELETE":
                server.delete_submission(uid, int(submission_id))
                return self.send_bytes(204, b"")
            return self.send_json(405, not_allowed)

    return Handler

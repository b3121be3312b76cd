"""Fill a compiled XForm with the real ODK Web Forms engine (@getodk/xforms-engine).

The engine runs in Node through the harness ``forms/engine/fill.mjs``; this
module only speaks JSON to it over stdin/stdout. Answers have the shape of a
KoboToolbox submission JSON (flat "/"-joined keys without the root node, string
values, repeats as lists of objects keyed by full paths). See
``forms/engine/README.md``.

Only the standard library is imported, so this module works whether or not
``forms`` is a package.
"""

from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = [
    "EngineResult",
    "WebEngineError",
    "WebEngineUnavailable",
    "engine_dir",
    "fill_form",
    "fill_forms",
]

DEFAULT_LANGUAGE = "Français (fr)"
MIN_NODE = (20, 19)  # @getodk/xforms-engine 0.22 and jsdom 27 need Node >= 20.19
_INSTALL_HINT = (
    "run `make test`, which installs the ODK Web Forms engine with npm "
    "(or by hand: `cd {dir} && npm ci`)"
)


class WebEngineError(RuntimeError):
    """The Node harness crashed, timed out or answered something unreadable."""


class WebEngineUnavailable(WebEngineError):
    """Node or the engine's node_modules are missing on this machine."""


@dataclass(frozen=True)
class EngineResult:
    """What the engine made of one answer set.

    ``violations`` are dicts with ``ref`` (e.g. "/data/members[2]/age"),
    ``key`` (the Kobo key, "members/age"), ``kind`` ("constraint" or
    "required"), ``message`` (in the requested language) and ``form_message``
    (False when the form defines no message and a default text was used).
    ``errors`` are unexpected problems (unknown key, choice not in the list,
    value the engine rejected, answer to a non-relevant question...).
    ``skipped`` lists keys whose nodes the engine fills itself (calculate,
    preload/metadata, readonly) and which were therefore not set.
    """

    ok: bool
    submission_xml: str | None
    violations: list[dict]
    errors: list[str]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> EngineResult:
        return cls(
            ok=bool(data.get("ok")),
            submission_xml=data.get("submission_xml"),
            violations=list(data.get("violations") or []),
            errors=list(data.get("errors") or []),
            skipped=list(data.get("skipped") or []),
        )


def engine_dir() -> Path:
    """The folder holding package.json, fill.mjs and node_modules."""
    return Path(__file__).resolve().parent / "engine"


def _node_executable() -> str:
    node = os.environ.get("TERRAIN_NODE") or shutil.which("node")
    if not node:
        raise WebEngineUnavailable(
            "Node.js is not installed (no `node` on PATH); the ODK Web Forms engine needs it: "
            + _INSTALL_HINT.format(dir=engine_dir())
        )
    version = _node_version(node)
    if version is not None and version < MIN_NODE:
        raise WebEngineUnavailable(
            f"{node} is Node {'.'.join(map(str, version))}; the ODK Web Forms engine needs Node "
            f">= {'.'.join(map(str, MIN_NODE))} (Debian bookworm's own nodejs package is 18, too old)"
        )
    return node


@lru_cache(maxsize=None)
def _node_version(node: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WebEngineUnavailable(f"cannot run {node} ({exc}): " + _INSTALL_HINT.format(dir=engine_dir())) from exc
    match = re.match(r"v?(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_installed() -> Path:
    folder = engine_dir()
    harness = folder / "fill.mjs"
    package = folder / "node_modules" / "@getodk" / "xforms-engine" / "package.json"
    jsdom = folder / "node_modules" / "jsdom" / "package.json"
    if not harness.is_file():
        raise WebEngineUnavailable(f"the harness {harness} is missing")
    if not package.is_file() or not jsdom.is_file():
        raise WebEngineUnavailable(
            f"the ODK Web Forms engine is not installed in {folder / 'node_modules'}: "
            + _INSTALL_HINT.format(dir=folder)
        )
    return harness


def _run(request: dict, timeout: float) -> dict:
    node = _node_executable()
    harness = _check_installed()
    try:
        proc = subprocess.run(
            [node, str(harness)],
            input=json.dumps(request, ensure_ascii=False).encode("utf-8"),
            capture_output=True,
            cwd=str(harness.parent),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:  # node vanished between which() and run()
        raise WebEngineUnavailable(f"cannot start Node ({exc}): " + _INSTALL_HINT.format(dir=engine_dir())) from exc
    except subprocess.TimeoutExpired as exc:
        raise WebEngineError(f"the ODK Web Forms engine did not answer within {timeout} s") from exc

    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "ERR_MODULE_NOT_FOUND" in stderr or "Cannot find package" in stderr:
            raise WebEngineUnavailable(
                "the ODK Web Forms engine's packages are incomplete: "
                + _INSTALL_HINT.format(dir=engine_dir())
                + f"\n{stderr[-2000:]}"
            )
        raise WebEngineError(f"the engine harness failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    try:
        return json.loads(proc.stdout.decode("utf-8"))
    except ValueError as exc:
        raise WebEngineError(
            f"the engine harness printed no JSON: {proc.stdout[:500]!r}\n{stderr[-2000:]}"
        ) from exc


def fill_form(
    xform_xml: str,
    answers: dict,
    language: str = DEFAULT_LANGUAGE,
    timeout: float = 60,
    *,
    attachments: dict[str, str] | None = None,
) -> EngineResult:
    """Load ``xform_xml`` into the engine, fill ``answers``, validate, serialise.

    ``attachments`` maps form attachment file names (e.g. "villages.csv" of a
    select_one_from_file) to their text; missing ones load as blank.
    """
    request = {"xform": xform_xml, "answers": answers, "language": language}
    if attachments:
        request["attachments"] = attachments
    return EngineResult.from_json(_run(request, timeout))


def fill_forms(
    xform_xml: str,
    answer_sets: list[dict],
    language: str = DEFAULT_LANGUAGE,
    timeout: float = 60,
    *,
    attachments: dict[str, str] | None = None,
) -> list[EngineResult]:
    """Like :func:`fill_form` for many answer sets in one Node process.

    The form is loaded once and a fresh instance is created for each set; the
    results come back in the order of ``answer_sets``.
    """
    answer_sets = list(answer_sets)
    if not answer_sets:
        return []
    request = {"xform": xform_xml, "batch": answer_sets, "language": language}
    if attachments:
        request["attachments"] = attachments
    data = _run(request, timeout)
    results = data.get("results")
    if not isinstance(results, list) or len(results) != len(answer_sets):
        raise WebEngineError(f"the engine harness returned {type(results).__name__} for {len(answer_sets)} answer sets")
    return [EngineResult.from_json(item) for item in results]

"""Terrain's settings: one file (``terrain.toml``) plus environment variables.

Where each value comes from, last one wins:

1. the defaults below;
2. the settings file: ``$TERRAIN_SETTINGS`` if set, else ``terrain.toml`` in the working
   directory if there is one (``terrain.toml`` in the repository documents every key);
3. environment variables (``TERRAIN_WAREHOUSE`` and the others in ``ENVIRONMENT``);
4. what a flow run or a command passes explicitly (a deployment's parameters).

Relative paths in the file are relative to the file's folder, so a scheduled run finds
the same warehouse whatever its working directory; relative paths from the environment
or parameters are relative to the working directory.

The KoboToolbox token is never a setting: it comes from ``KOBO_TOKEN`` or the Prefect
Secret block ``kobo-token`` (see ``flows.sync.resolve_token``). A token in the file is
refused, so that it never lands in the repository.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from flows.sync import SyncSettings
from forms.errors import TerrainError

SETTINGS_FILE = "terrain.toml"
SETTINGS_ENV = "TERRAIN_SETTINGS"
RECONCILE_CHOICES = ("auto", "always", "never")
PATH_KEYS = ("warehouse_path", "attachments_dir", "report_dir")
FORBIDDEN_KEYS = ("token", "kobo_token", "api_key", "password")

# Setting -> environment variables, first found wins.
ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "kobo_url": ("TERRAIN_KOBO_URL", "KOBO_URL"),
    "forms": ("TERRAIN_FORMS",),
    "warehouse_path": ("TERRAIN_WAREHOUSE",),
    "attachments_dir": ("TERRAIN_ATTACHMENTS_DIR",),
    "download_attachments": ("TERRAIN_DOWNLOAD_ATTACHMENTS",),
    "write_back": ("TERRAIN_WRITE_BACK",),
    "page_size": ("TERRAIN_PAGE_SIZE",),
    "parallel": ("TERRAIN_PARALLEL",),
    "reconcile": ("TERRAIN_RECONCILE",),
    "lock_timeout_seconds": ("TERRAIN_LOCK_TIMEOUT",),
    "report_dir": ("TERRAIN_REPORT_DIR",),
    "prefect_port": ("TERRAIN_PREFECT_PORT",),
    "verify_tls": ("TERRAIN_VERIFY_TLS",),
}


class SettingsError(TerrainError):
    """The settings file or an environment variable holds something Terrain cannot use."""


@dataclass(frozen=True)
class Settings:
    kobo_url: str = "https://kf.kobotoolbox.org"
    forms: tuple[str, ...] = ()  # KoboToolbox project (asset) uids; empty: every deployed project
    warehouse_path: str = "terrain.duckdb"
    attachments_dir: str | None = None  # None: "attachments" beside the warehouse
    download_attachments: bool = True
    write_back: bool = False  # set KoboToolbox validation statuses: on hold if quarantined, approved once clean
    page_size: int = 1000
    parallel: int = 1
    reconcile: str = "auto"
    lock_timeout_seconds: float = 600.0
    report_dir: str = "reports"
    prefect_port: int = 4200  # the local Prefect API and UI that `terrain serve` starts
    verify_tls: bool = True  # False only for a server with a self-signed certificate (a warning is logged)
    source: str | None = field(default=None, compare=False)  # the settings file read, if any

    def sync_settings(self) -> SyncSettings:
        return SyncSettings(page_size=self.page_size, parallel=self.parallel, reconcile=self.reconcile,
                            download_attachments=self.download_attachments, write_back=self.write_back,
                            attachments_dir=self.attachments_dir)

    def public(self) -> dict[str, Any]:
        """The settings as shown in logs and artifacts (there is no secret among them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}


KEYS = tuple(f.name for f in fields(Settings) if f.name != "source")


def settings_file(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings file to read: ``path``, else $TERRAIN_SETTINGS, else ./terrain.toml if present."""
    environ = os.environ if environ is None else environ
    if path:
        chosen, why = Path(path), "given"
    elif environ.get(SETTINGS_ENV, "").strip():
        chosen, why = Path(environ[SETTINGS_ENV].strip()), f"${SETTINGS_ENV}"
    else:
        default = Path(SETTINGS_FILE)
        return default if default.is_file() else None
    if not chosen.is_file():
        raise SettingsError(f"le fichier de réglages {chosen} ({why}) n'existe pas ; copiez terrain.toml du "
                            f"dépôt et modifiez-le",
                            f"the settings file {chosen} ({why}) does not exist; copy terrain.toml from the "
                            f"repository and edit it")
    return chosen


def read_settings_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path} n'est pas un TOML valide : {error}", f"{path} is not valid TOML: {error}") from None
    secret = [k for k in data if k.lower() in FORBIDDEN_KEYS]
    if secret:
        raise SettingsError(f"{path} contient '{secret[0]}' : ne mettez jamais le jeton KoboToolbox dans un "
                            f"fichier ; utilisez KOBO_TOKEN ou le bloc Secret Prefect 'kobo-token'",
                            f"{path} holds '{secret[0]}': never put the KoboToolbox token in a file; set KOBO_TOKEN "
                            f"or the Prefect Secret block 'kobo-token'")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise SettingsError(f"{path} : réglage inconnu {names} ; réglages connus : {', '.join(KEYS)}",
                            f"{path}: unknown setting {names}; known: {', '.join(KEYS)}")
    base = path.resolve().parent
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = str(base / value)
        elif isinstance(value, str):
            data[key] = str(Path(value).expanduser())
    return data


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, names in ENVIRONMENT.items():
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                values[key] = (name, value)
                break
    return values


def _coerce(key: str, value: Any, origin: str) -> Any:
    """Checks and converts one value; ``origin`` says where it came from, for the message."""
    def fail(expected_fr: str, expected_en: str) -> SettingsError:
        return SettingsError(f"{key} = {value!r} ({origin}) : attendu {expected_fr}",
                             f"{key} = {value!r} ({origin}): expected {expected_en}")

    if key == "forms":
        if isinstance(value, str):
            value = [part for part in value.replace(",", " ").split() if part]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise fail("une liste d'uid de projets (assets)", "a list of project (asset) uids")
        return tuple(v.strip() for v in value if v.strip())
    if key in ("page_size", "parallel", "prefect_port"):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise fail("un nombre entier", "a whole number") from None
        if isinstance(value, bool) or number < 1 or (key == "page_size" and number > 30000):
            raise fail("un nombre entier d'au moins 1" + (" et d'au plus 30000" if key == "page_size" else ""),
                       "a whole number of at least 1" + (" and at most 30000" if key == "page_size" else ""))
        return number
    if key == "lock_timeout_seconds":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise fail("un nombre de secondes", "a number of seconds") from None
        if isinstance(value, bool) or number < 0:
            raise fail("un nombre de secondes, 0 ou plus", "a number of seconds, 0 or more")
        return number
    if key in ("download_attachments", "write_back", "verify_tls"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise fail("true ou false", "true or false")
    if key == "reconcile":
        if value not in RECONCILE_CHOICES:
            raise fail(" ou ".join(RECONCILE_CHOICES), " or ".join(RECONCILE_CHOICES))
        return value
    if key == "attachments_dir":
        return str(value) if value not in (None, "") else None
    if key in ("kobo_url", "warehouse_path", "report_dir"):
        if not isinstance(value, str) or not value.strip():
            raise fail("un texte non vide", "a non-empty string")
        return value.strip()
    return value


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """The settings from the defaults, the settings file, the environment and ``overrides``
    (keyword arguments named as the settings; None means "not given")."""
    environ = os.environ if environ is None else environ
    unknown = sorted(set(overrides) - set(KEYS))
    if unknown:
        raise SettingsError(f"réglage inconnu {', '.join(unknown)} ; réglages connus : {', '.join(KEYS)}",
                            f"unknown setting {', '.join(unknown)}; known: {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    chosen = settings_file(path, environ)
    if chosen is not None:
        for key, value in read_settings_file(chosen).items():
            values[key] = _coerce(key, value, str(chosen))
    for key, (name, value) in _from_environment(environ).items():
        values[key] = _coerce(key, value, f"${name}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, value, "parameter")
    return replace(Settings(), **values, source=str(chosen) if chosen else None)


__all__ = ["ENVIRONMENT", "KEYS", "Settings", "SettingsError", "load_settings", "settings_file"]

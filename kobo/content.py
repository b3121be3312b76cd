"""KoboToolbox's JSON form ``content`` (kpi's "ss structure", kobo-api.md §6.1).

kpi keeps the XLSForm sheets as lists of rows where every translated column
(label, hint, constraint_message...) is a list indexed by ``translations``.
"""

from __future__ import annotations

from typing import Any

from forms.source import FormSource

TRANSLATED_PREFIXES = ("label", "hint", "constraint_message", "required_message", "media::image")


def _split_column(column: str) -> tuple[str, str | None]:
    """'label::Français (fr)' -> ('label', 'Français (fr)'); 'name' -> ('name', None)."""
    if "::" in column:
        base, language = column.split("::", 1)
        if base in TRANSLATED_PREFIXES:
            return base, language
    return column, None


def translations_of(source: FormSource) -> list[str | None]:
    settings = (source.sheets.get("settings").records() or [{}])[0] if "settings" in source.sheets else {}
    default = settings.get("default_language")
    languages: list[str | None] = []
    for sheet in source.sheets.values():
        for column in sheet.header:
            _, language = _split_column(column)
            if language and language not in languages:
                languages.append(language)
    if default in languages:
        languages.remove(default)
        languages.insert(0, default)
    return languages or [None]


def _rows(records: list[dict[str, str]], translations: list[str | None]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        row: dict[str, Any] = {}
        translated: dict[str, list[str | None]] = {}
        for column, value in record.items():
            base, language = _split_column(column)
            if language is None and base in TRANSLATED_PREFIXES:
                translated.setdefault(base, [None] * len(translations))[0] = value
            elif language is not None:
                translated.setdefault(base, [None] * len(translations))[translations.index(language)] = value
            else:
                row[base] = value
        row.update(translated)
        rows.append(row)
    return rows


def content_from_source(source: FormSource) -> dict[str, Any]:
    """The ``content`` a KoboToolbox asset holds after importing this form's XLSForm."""
    translations = translations_of(source)
    survey = _rows(source.sheets["survey"].records(), translations)
    for row in survey:
        kind = row.get("type", "")
        if kind.startswith(("select_one ", "select_multiple ")):
            row["type"], row["select_from_list_name"] = kind.split(" ", 1)
        if "name" in row:
            row["$autoname"] = row["name"]
    choices = _rows(source.sheets["choices"].records(), translations) if "choices" in source.sheets else []
    settings = source.sheets["settings"].records()[0] if "settings" in source.sheets else {}
    return {
        "schema": "1",
        "survey": survey,
        "choices": choices,
        "settings": dict(settings),
        "translations": translations,
        "translated": sorted({k for row in survey + choices for k, v in row.items() if isinstance(v, list)}),
    }


def content_settings(content: dict[str, Any] | None) -> dict[str, Any]:
    """The settings of an asset's content: a dict, or a list of one row in older kpi content."""
    settings = (content or {}).get("settings") or {}
    if isinstance(settings, list):
        settings = settings[0] if settings and isinstance(settings[0], dict) else {}
    return settings if isinstance(settings, dict) else {}


def form_id_of(content: dict[str, Any] | None) -> str | None:
    """The XLSForm ``form_id`` an asset's content was imported from. Our local server
    keeps the settings sheet's ``form_id``; kpi may keep it as ``id_string``."""
    settings = content_settings(content)
    value = settings.get("form_id") or settings.get("id_string")
    return str(value) if value else None


def xlsform_from_content(content: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The XLSForm sheets (as pyxform's dict input) behind a KoboToolbox asset's content,
    so any project on the server compiles and gets a field dictionary like our own forms."""
    translations = content.get("translations") or [None]

    def sheet(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> list[dict[str, str]]:
        records = []
        for row in rows:
            record: dict[str, str] = {}
            for key, value in row.items():
                if key.startswith("$") or key in skip or value in (None, "", []):
                    continue
                if isinstance(value, list):
                    for language, text in zip(translations, value):
                        if text not in (None, ""):
                            record[f"{key}::{language}" if language else key] = str(text)
                elif isinstance(value, bool):
                    record[key] = "yes" if value else ""
                else:
                    record[key] = str(value)
            if row.get("select_from_list_name") and "type" in record:
                record["type"] = f"{record['type']} {row['select_from_list_name']}"
                record.pop("select_from_list_name", None)
            records.append(record)
        return records

    survey = sheet(content.get("survey") or [])
    choices = sheet(content.get("choices") or [])
    settings = {k: str(v) for k, v in content_settings(content).items() if not isinstance(v, (list, dict))}
    if "id_string" in settings:  # kpi's name of form_id; pyxform refuses both
        settings.setdefault("form_id", settings["id_string"])
        del settings["id_string"]
    if translations[0] and "default_language" not in settings:
        settings["default_language"] = translations[0]
    return {"survey": survey, "choices": choices, "settings": [settings] if settings else []}

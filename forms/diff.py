"""What changed between two versions of a form (`terrain forms diff`): questions added,
removed or changed, and choices added, removed or relabelled, each line in French then
in English, in words a data manager reads. Hints are not compared: the field dictionary
does not keep them."""

from __future__ import annotations

from typing import Any

from forms.dictionary import Field, FieldDictionary

# What is compared between a question's two versions, and its name in French and English.
COMPARED = {
    "xlsform_type": ("type", "type"),
    "table": ("table", "table"),
    "list_name": ("liste de choix", "choice list"),
    "required": ("obligatoire", "required"),
    "relevant": ("condition d'affichage", "relevance"),
    "constraint": ("contrainte", "constraint"),
    "constraint_message": ("message de contrainte", "constraint message"),
    "choice_filter": ("filtre de choix", "choice filter"),
    "calculation": ("calcul", "calculation"),
    "parameters": ("paramètres", "parameters"),
    "pii": ("donnée personnelle", "personal data"),
    "labels": ("libellé", "label"),
}


def _fields(dictionary: FieldDictionary) -> dict[str, Field]:
    return {f.kobo_key: f for f in dictionary.fields()}


def _shown(value: Any) -> str:
    """A compared value as a data manager reads it: labels per language, yes/no, nothing."""
    if value is None or value == "" or value == {}:
        return "(rien / nothing)"
    if isinstance(value, bool):
        return "oui / yes" if value else "non / no"
    if isinstance(value, dict):
        return "; ".join(f"{key} : « {text} »" for key, text in value.items())
    return f"« {value} »"


def diff_dictionaries(old: FieldDictionary, new: FieldDictionary) -> list[str]:
    """One line per difference; empty when the versions describe the same form."""
    lines: list[str] = []
    before, after = _fields(old), _fields(new)
    for key in after.keys() - before.keys():
        f = after[key]
        lines.append(f"+ question {key} ({f.xlsform_type}) ajoutée à la table {f.table}, colonne {f.column} / "
                     f"added to table {f.table}, column {f.column}")
    for key in before.keys() - after.keys():
        f = before[key]
        lines.append(f"- question {key} ({f.xlsform_type}) retirée ; sa colonne {f.table}.{f.column} garde les "
                     f"réponses des versions précédentes / removed; its column {f.table}.{f.column} keeps the "
                     f"answers of earlier versions")
    for key in before.keys() & after.keys():
        for attribute, (french, english) in COMPARED.items():
            was, now = getattr(before[key], attribute), getattr(after[key], attribute)
            if was != now:
                lines.append(f"~ question {key} : {french} / {english} : {_shown(was)} -> {_shown(now)}")
    for list_name in sorted(set(old.choices) | set(new.choices)):
        was = {c.name: c for c in old.choices.get(list_name, [])}
        now = {c.name: c for c in new.choices.get(list_name, [])}
        for name in sorted(now.keys() - was.keys()):
            lines.append(f"+ choix {name} ajouté à la liste {list_name} / choice {name} added to list {list_name}")
        for name in sorted(was.keys() - now.keys()):
            lines.append(f"- choix {name} retiré de la liste {list_name} / choice {name} removed from list {list_name}")
        for name in sorted(was.keys() & now.keys()):
            if was[name].labels != now[name].labels:
                lines.append(f"~ choix {name} de la liste {list_name} : libellé / label : "
                             f"{_shown(was[name].labels)} -> {_shown(now[name].labels)}")
            if was[name].filters != now[name].filters:
                lines.append(f"~ choix {name} de la liste {list_name} : filtres / filters : "
                             f"{_shown(was[name].filters)} -> {_shown(now[name].filters)}")
    order = {"+": 0, "-": 1, "~": 2}
    return sorted(lines, key=lambda line: (order[line[0]], line))

"""What changed between two versions of a form (`terrain forms diff`): questions added,
removed or changed, and choices added or removed, in words a data manager reads."""

from __future__ import annotations

from forms.dictionary import Field, FieldDictionary

COMPARED = ("xlsform_type", "table", "kobo_key", "list_name", "required", "relevant", "constraint", "labels")


def _fields(dictionary: FieldDictionary) -> dict[str, Field]:
    return {f.kobo_key: f for f in dictionary.fields()}


def diff_dictionaries(old: FieldDictionary, new: FieldDictionary) -> list[str]:
    """One line per difference; empty when the versions describe the same form."""
    lines: list[str] = []
    before, after = _fields(old), _fields(new)
    for key in after.keys() - before.keys():
        f = after[key]
        lines.append(f"+ question {key} ({f.xlsform_type}) added to table {f.table}, column {f.column}")
    for key in before.keys() - after.keys():
        f = before[key]
        lines.append(f"- question {key} ({f.xlsform_type}) removed; its column {f.table}.{f.column} keeps the "
                     f"answers of earlier versions")
    for key in before.keys() & after.keys():
        for attribute in COMPARED:
            was, now = getattr(before[key], attribute), getattr(after[key], attribute)
            if was != now:
                lines.append(f"~ question {key}: {attribute} changed from {was!r} to {now!r}")
    for list_name in sorted(set(old.choices) | set(new.choices)):
        was = {c.name for c in old.choices.get(list_name, [])}
        now = {c.name for c in new.choices.get(list_name, [])}
        for name in sorted(now - was):
            lines.append(f"+ choice {name} added to list {list_name}")
        for name in sorted(was - now):
            lines.append(f"- choice {name} removed from list {list_name}")
    order = {"+": 0, "-": 1, "~": 2}
    return sorted(lines, key=lambda line: (order[line[0]], line))

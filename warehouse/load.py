"""Loading one page of submissions: land raw, type each submission with the form
version it was collected with, validate, replace clean rows, record issues, move the
watermark, all in one transaction. A run killed at any point leaves the warehouse as
it was after the last whole page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from forms.dictionary import FieldDictionary
from validation.corrections import apply_corrections
from validation.rules import QualitySettings, run_rules
from validation.schemas import FormValidator
from warehouse.store import Warehouse
from warehouse.typing import Issue, type_submissions

VERSION_KEY = "__version__"
VersionLookup = Callable[[str], "FieldDictionary | None"]


@dataclass
class PageResult:
    pulled: int
    new: int
    edited: int
    unchanged: int
    quarantined: int


class FormLoader:
    """Loads pages of one KoboToolbox project into the warehouse.

    ``dictionary`` is the deployed version's; ``version_lookup`` gives the dictionary of
    another version uid (None when unknown: the deployed one is used). Each version's
    dictionary is registered, so a new version adds columns and never drops any.
    """

    def __init__(self, warehouse: Warehouse, dictionary: FieldDictionary, asset_uid: str,
                 version_lookup: VersionLookup | None = None, deployed_version: str | None = None,
                 quality: QualitySettings | None = None):
        self.warehouse = warehouse
        self.quality = quality or QualitySettings()
        self.dictionary = dictionary
        self.asset_uid = asset_uid
        self.version_lookup = version_lookup
        self._by_version: dict[str | None, tuple[FieldDictionary, FormValidator]] = {}
        self._register(deployed_version, dictionary)

    def _register(self, version_uid: str | None, dictionary: FieldDictionary) -> tuple[FieldDictionary, FormValidator]:
        key = (dictionary.form_id, dictionary.version)
        known = next((pair for pair in self._by_version.values() if (pair[0].form_id, pair[0].version) == key), None)
        pair = known or (dictionary, FormValidator(dictionary))
        if known is None:
            self.warehouse.register_form_version(dictionary)
        if version_uid:
            self.warehouse.register_asset_version(self.asset_uid, version_uid, dictionary)
        self._by_version[version_uid] = pair
        return pair

    def for_version(self, version_uid: str | None) -> tuple[FieldDictionary, FormValidator]:
        if version_uid in self._by_version:
            return self._by_version[version_uid]
        found = self.version_lookup(version_uid) if (self.version_lookup and version_uid) else None
        return self._register(version_uid, found or self.dictionary)

    def retype(self, submissions: list[dict[str, Any]], now: dt.datetime) -> int:
        """Types, validates and (re)places the clean rows of these submissions; returns how
        many went to quarantine. The caller holds the transaction."""
        groups: dict[str | None, list[dict[str, Any]]] = {}
        for submission in submissions:
            version = submission.get(VERSION_KEY)
            groups.setdefault(version if isinstance(version, str) else None, []).append(submission)
        quarantined = 0
        for version_uid, group in groups.items():
            dictionary, validator = self.for_version(version_uid)
            batch = type_submissions(dictionary, apply_corrections(self.warehouse.con, dictionary, group, now))
            issues: list[Issue] = (batch.issues + validator.validate(batch.tables)
                                   + run_rules(dictionary, batch.tables, self.warehouse.con, self.quality))
            errors = {issue.root_uuid for issue in issues if issue.severity == "error"}
            quarantined += len(errors)
            self.warehouse.replace_clean(dictionary, batch.root_uuids, batch.tables, keep_out=errors)
            self.warehouse.record_issues(self.asset_uid, dictionary.form_id, batch.root_uuids, issues, now)
        return quarantined

    def load_page(self, submissions: list[dict[str, Any]], last_id: int | None) -> PageResult:
        now = dt.datetime.now(dt.timezone.utc)
        form_id = self.dictionary.form_id
        with self.warehouse.writing(), self.warehouse.transaction():
            landing = self.warehouse.land(self.asset_uid, form_id, submissions, now)
            quarantined = self.retype(landing.changed, now) if landing.changed else 0
            if landing.rejected:
                rejected = [_rejected_issue(why, what) for why, what in landing.rejected]
                # Seen again, the same unusable result replaces its issue instead of adding one.
                self.warehouse.record_issues(self.asset_uid, form_id, [i.root_uuid for i in rejected], rejected, now)
                quarantined += len(landing.rejected)
            if last_id is not None:
                self.warehouse.set_watermark(self.asset_uid, form_id, last_id, now)
        return PageResult(pulled=len(submissions), new=landing.new, edited=landing.edited,
                          unchanged=landing.unchanged, quarantined=quarantined)


def _rejected_issue(why: str, what: Any) -> Issue:
    """A quarantine row for something the server sent that is not a usable submission."""
    import hashlib
    import json

    text = json.dumps(what, ensure_ascii=False, default=str)
    return Issue(root_uuid=f"unidentified:{hashlib.sha256(text.encode()).hexdigest()[:16]}",
                 submission_id=None, table_name="raw.submissions", column_name=None, row_key=None,
                 check_code="malformed_submission", value=text[:500], severity="error",
                 message=f"Résultat inutilisable reçu du serveur : {why} / Unusable result from the server: {why}")

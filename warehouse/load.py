"""Loading one page of submissions: land raw, type, validate, replace clean rows,
record issues, move the watermark, all in one transaction. A run killed at any
point leaves the warehouse as it was after the last whole page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from forms.dictionary import FieldDictionary
from validation.schemas import FormValidator
from warehouse.store import Warehouse
from warehouse.typing import type_submissions


@dataclass
class PageResult:
    pulled: int
    new: int
    edited: int
    unchanged: int
    quarantined: int


class FormLoader:
    """Loads pages of one KoboToolbox project into the warehouse."""

    def __init__(self, warehouse: Warehouse, dictionary: FieldDictionary, asset_uid: str):
        self.warehouse = warehouse
        self.dictionary = dictionary
        self.asset_uid = asset_uid
        self.validator = FormValidator(dictionary)
        warehouse.register_form_version(dictionary)

    def load_page(self, submissions: list[dict[str, Any]], last_id: int | None) -> PageResult:
        now = dt.datetime.now(dt.timezone.utc)
        form_id = self.dictionary.form_id
        with self.warehouse.transaction():
            landing = self.warehouse.land(self.asset_uid, form_id, submissions, now)
            quarantined = 0
            if landing.changed:
                batch = type_submissions(self.dictionary, landing.changed)
                issues = batch.issues + self.validator.validate(batch.tables)
                errors = {issue.root_uuid for issue in issues if issue.severity == "error"}
                quarantined = len(errors)
                self.warehouse.replace_clean(self.dictionary, batch.root_uuids, batch.tables, keep_out=errors)
                self.warehouse.record_issues(self.asset_uid, form_id, batch.root_uuids, issues, now)
            if last_id is not None:
                self.warehouse.set_watermark(self.asset_uid, form_id, last_id, now)
        return PageResult(pulled=len(submissions), new=landing.new, edited=landing.edited,
                          unchanged=landing.unchanged, quarantined=quarantined)

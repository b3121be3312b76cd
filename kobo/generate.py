"""Test submissions generated from a form's field dictionary.

Each submission is what ODK Collect would have sent and KoboToolbox would serve
(kobo-api.md §4): flat ``/``-joined keys, repeats as lists, string values, only the
relevant questions answered. A submission depends only on (seed, index), so
generating 1,100 gives the same first 1,000 as generating 1,000. About
``mistake_rate`` of them carry one realistic enumerator mistake that validation
must catch (a swapped GPS, an age typed with one digit too many, a required answer
missing after a form edit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from forms.dictionary import Field, FieldDictionary, Table
from forms.errors import FormError
from forms.expressions import bound_date, date_bounds, is_true, numeric_bounds
from forms.source import read_admin_units
from kobo.server import BASE_PLACEHOLDER, DEFAULT_OWNER, MEDIA_TYPES, attachments_for

FIRST_NAMES = {
    "female": ["Aminata", "Fatoumata", "Mariam", "Awa", "Kadiatou", "Oumou", "Djeneba", "Assétou",
               "Salimata", "Rokia", "Aïssata", "Hawa", "Nana", "Korotoumou", "Bintou", "Fanta"],
    "male": ["Moussa", "Mamadou", "Seydou", "Bakary", "Oumar", "Souleymane", "Adama", "Boubacar",
             "Drissa", "Lassina", "Yacouba", "Ibrahim", "Siaka", "Modibo", "Issa", "Abdoulaye"],
}
FAMILY_NAMES = ["Traoré", "Coulibaly", "Diarra", "Keïta", "Koné", "Sangaré", "Dembélé", "Diallo",
                "Touré", "Maïga", "Cissé", "Sidibé", "Sanogo", "Bengaly", "Ouattara", "Dao", "Goïta"]
OTHER_ACTIVITIES = ["Vente de bois de chauffe", "Orpaillage", "Forge", "Teinture de bazin",
                    "Fabrication de savon", "Transport en moto-taxi", "Meunerie"]
VENUES = ["École de {village}", "Maison des femmes de {village}", "Vestibule du chef de village de {village}",
          "Centre de santé communautaire de {village}", "Mairie de {village}"]
ENUMERATORS = [f"enq_{n:02d}" for n in range(1, 13)]
MALI_BOX = (10.2, 24.9, -12.2, 4.2)  # lat min, lat max, lon min, lon max
MALI_UTC_OFFSET = "+00:00"  # Mali keeps GMT all year
SURVEY_START = dt.datetime(2026, 6, 1, 7, 30)  # all generated dates are in the past
MISTAKES = ("swapped_gps", "age_typo", "missing_required")


@dataclass(frozen=True)
class Deployment:
    """What the server stamps on each submission of one deployed asset."""
    asset_uid: str
    version_uid: str
    formhub_uuid: str


def device_id(enumerator: str) -> str:
    """The ODK Collect device id of an enumerator's phone (one phone each)."""
    return "collect:" + hashlib.sha1(enumerator.encode()).hexdigest()[:16]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _weighted(rng: random.Random, spec: str) -> str:
    names, weights = zip(*((p.split("=")[0], float(p.split("=")[1])) for p in spec.split(",")))
    return rng.choices(names, weights=weights)[0]


class _Context:
    """Answers so far, looked up by question name: the current repeat row first."""

    def __init__(self, dictionary: FieldDictionary, main: dict[str, str]):
        self.dictionary = dictionary
        self.main = main
        self.row: dict[str, str] = {}

    def resolve(self, name: str) -> Any:
        if name in self.row:
            return self.row[name]
        return self.main.get(name)


class SubmissionGenerator:
    def __init__(self, dictionary: FieldDictionary, deployment: Deployment, seed: int = 2026,
                 mistake_rate: float = 0.02):
        self.dictionary = dictionary
        self.deployment = deployment
        self.seed = seed
        self.mistake_rate = mistake_rate
        self.units = {u["village"]: u for u in read_admin_units()}
        self.repeat_counts = {
            f.fake.split(":", 1)[1]: f.name for f in dictionary.fields() if f.fake and f.fake.startswith("count:")
        }
        self.media_keys = frozenset(f.kobo_key for f in dictionary.fields() if f.xlsform_type in MEDIA_TYPES)

    # -- values -----------------------------------------------------------------------
    def _choices(self, f: Field, context: _Context) -> list[str]:
        items = self.dictionary.choices.get(f.list_name or "", [])
        if f.choice_filter:
            items = [c for c in items if is_true(f.choice_filter, context.resolve, choice=c.filters)]
        return [c.name for c in items]

    def _relation(self, rng: random.Random, context: _Context, options: list[str]) -> str:
        """A relation to the head that fits the ages: children are younger, parents older."""
        age, head_age = _number(context.row.get("member_age")), _number(context.main.get("head_age"))
        if age is None or head_age is None:
            return rng.choice([o for o in options if o != "head"])
        if age <= head_age - 15:
            pool = {"child": 70, "grandchild": 12 if age <= head_age - 35 else 0, "other_relative": 12, "not_related": 6}
        elif age >= head_age + 16:
            pool = {"parent": 60, "other_relative": 30, "not_related": 10}
        else:
            pool = {"spouse": 55, "other_relative": 35, "not_related": 10}
        names = [o for o in pool if o in options and pool[o]]
        return rng.choices(names, weights=[pool[o] for o in names])[0]

    def _integer(self, f: Field, rng: random.Random, context: _Context | None = None) -> int:
        bounds = numeric_bounds(f.constraint)
        low, high = (bounds[0], bounds[1]) if bounds else (None, None)
        low = 0 if low is None else math.ceil(low)
        high = low + 100 if high is None else math.floor(high)
        if f.fake == "age" and context is not None and context.row.get("__position") == "1" \
                and _number(context.main.get("head_age")) is not None:
            value = int(_number(context.main.get("head_age")))  # the first member is the head
        elif f.fake == "age":
            value = int(min(rng.expovariate(1 / 22), 95))
        elif f.fake == "adult_age":
            value = int(rng.triangular(20, 85, 42))
        elif f.fake == "fcfa":
            value = int(round(rng.lognormvariate(math.log(60000), 0.9) / 500) * 500)
        elif f.fake == "minutes":
            value = int(rng.choice([5, 10, 15, 20, 30, 30, 45, 60, 90, 120]))
        elif f.fake == "fee":
            value = int(rng.choice([0, 250, 500, 500, 1000, 1000, 1500, 2000]))
        elif f.fake == "users":
            value = int(rng.triangular(40, 1500, 350))
        elif f.fake == "score":
            value = int(rng.triangular(low, high, (low + high) * 0.6))
        else:
            value = rng.randint(low, min(high, low + 12))
        return max(low, min(high, value))

    def _date(self, f: Field, rng: random.Random) -> str:
        """A day in the two years before the survey, within the question's date range
        (``. <= today()``, ``. >= date('2020-01-01')``); a dateTime gets a time of day too."""
        high = SURVEY_START.date()
        low = high - dt.timedelta(days=700)
        bounds = date_bounds(f.constraint)
        if bounds:
            first, last, first_in, last_in = bounds
            # A dateTime on the last day is past that day's midnight, which is what XPath compares.
            first = None if first is None else bound_date(first) + dt.timedelta(days=0 if first_in else 1)
            last = None if last is None else bound_date(last) - dt.timedelta(
                days=0 if last_in and f.xlsform_type == "date" else 1)
            low, high = max(low, first or low), min(high, last or high)
            if low > high:  # a range outside the survey's own (a planned visit, say)
                low = first or last - dt.timedelta(days=700)
                high = last or first + dt.timedelta(days=700)
        day = high - dt.timedelta(days=rng.randint(0, max(0, (high - low).days)))
        if f.xlsform_type == "date":
            return day.isoformat()
        moment = dt.datetime.combine(day, dt.time(rng.randint(7, 17), rng.randint(0, 59)))
        return moment.isoformat(timespec="milliseconds") + MALI_UTC_OFFSET

    def _text(self, f: Field, rng: random.Random, context: _Context, sex: str) -> str:
        if f.fake == "full_name":
            return f"{rng.choice(FIRST_NAMES[sex])} {rng.choice(FAMILY_NAMES)}"
        if f.fake == "household_id":
            village = context.resolve("village") or "mli"
            return f"{village.replace('_', '')[:3].upper():X<3}-{rng.randint(1, 9999):04d}"
        if f.fake == "water_point_id":
            return f"WP-{rng.randint(1, 400):04d}"
        if f.fake == "other_activity":
            return rng.choice(OTHER_ACTIVITIES)
        if f.fake == "venue":
            unit = self.units.get(context.resolve("village") or "")
            return rng.choice(VENUES).format(village=unit["village_label"] if unit else "village")
        if f.fake == "phone":
            return f"+223 {rng.choice([6, 7, 9])}{rng.randint(0, 9)} {rng.randint(0, 99):02d} {rng.randint(0, 99):02d} {rng.randint(0, 99):02d}"
        return rng.choice(["RAS", "Néant", "Voir le chef de village", "Saison des pluies"])

    def _geopoint(self, rng: random.Random, context: _Context) -> str:
        unit = self.units.get(context.resolve("village") or "")
        if unit:
            lat = float(unit["latitude"]) + rng.uniform(-0.015, 0.015)
            lon = float(unit["longitude"]) + rng.uniform(-0.015, 0.015)
        else:
            lat, lon = rng.uniform(11.0, 15.0), rng.uniform(-8.0, -1.0)
        return f"{lat:.6f} {lon:.6f} {rng.uniform(250, 420):.1f} {rng.uniform(3, 15):.1f}"

    def _value(self, f: Field, rng: random.Random, context: _Context, times: dict[str, str], sex: str) -> str | None:
        kind = f.xlsform_type
        if kind in times:
            return times[kind]
        if kind == "deviceid":
            return times["deviceid"]
        if kind == "username":
            return times["username"]
        if kind == "select_one":
            options = self._choices(f, context)
            if "head" in options and context.row.get("__position") == "1":
                return "head"  # the first member listed is the head of household
            if "head" in options:
                return self._relation(rng, context, options)
            if f.fake and f.fake.startswith("choice:"):
                return _weighted(rng, f.fake.split(":", 1)[1])
            if f.list_name == "sex":
                return sex
            options = [o for o in options if o != "head"] or options
            return rng.choice(options) if options else None
        if kind == "select_multiple":
            options = self._choices(f, context)
            picked = rng.sample(options, k=min(len(options), rng.choice([1, 1, 2, 2, 3])))
            return " ".join(o for o in options if o in picked)
        if kind == "integer":
            return str(self._integer(f, rng, context))
        if kind == "decimal":
            bounds = numeric_bounds(f.constraint) or (0, 100, True, True)
            return f"{rng.uniform(bounds[0] or 0, bounds[1] or 100):.2f}"
        if kind == "geopoint":
            return self._geopoint(rng, context)
        if kind in ("date", "dateTime"):
            return self._date(f, rng)
        if kind in ("image", "photo", "audio", "video", "file"):
            return f"{rng.randint(1_700_000_000_000, 1_799_999_999_999)}.jpg"
        if kind == "audit":
            return "audit.csv"
        if kind == "calculate":
            return None
        return self._text(f, rng, context, sex)

    def _fill(self, table: Table, rng: random.Random, context: _Context, target: dict[str, Any],
              times: dict[str, str], sex: str, counts: dict[str, int]) -> None:
        for f in table.fields:
            if not is_true(f.relevant, context.resolve):
                continue
            if not f.required and f.xlsform_type not in times and rng.random() < 0.1:
                continue
            value = None
            # Constraints that depend on other answers (". <= ${members}") are met by trying
            # again, and for numbers finally by the smallest values.
            tries = [lambda: self._value(f, rng, context, times, sex)] * 20
            if f.xlsform_type in ("integer", "decimal"):
                tries += [lambda: "0", lambda: "1"]
            for attempt in tries:
                value = attempt()
                if value is None or not f.constraint or is_true(f.constraint, context.resolve, current=value):
                    break
            else:
                raise FormError(f"impossible de générer pour '{f.name}' une valeur qui respecte sa contrainte {f.constraint}",
                                f"cannot generate a value of '{f.name}' that meets its constraint {f.constraint}")
            if value is None:
                continue
            target[f.kobo_key] = value
            (context.row if table.is_repeat else context.main)[f.name] = value
        for child in self.dictionary.children_of(table.name):
            count_field = self.repeat_counts.get(child.name)
            count = int(context.main.get(count_field) or 1) if count_field else rng.randint(1, 4)
            rows = []
            for position in range(1, count + 1):
                outer_row = context.row
                row_sex = "female" if rng.random() < 0.52 else "male"
                context.row = {"__position": str(position)}
                row: dict[str, Any] = {}
                self._fill(child, rng, context, row, times, row_sex, counts)
                context.row = outer_row
                if row:
                    rows.append(row)
            if rows:
                target[child.repeat_key] = rows

    # -- mistakes ---------------------------------------------------------------------
    def _inject_mistake(self, submission: dict[str, Any], rng: random.Random) -> str:
        kind = rng.choice(MISTAKES)
        geopoints = [f for f in self.dictionary.main_table.fields if f.xlsform_type == "geopoint"]
        if kind == "swapped_gps" and geopoints and geopoints[0].kobo_key in submission:
            lat, lon, *rest = submission[geopoints[0].kobo_key].split()
            submission[geopoints[0].kobo_key] = " ".join([lon, lat, *rest])
            return kind
        for table in self.dictionary.tables.values():
            for f in table.fields:
                if kind == "age_typo" and f.xlsform_type == "integer" and numeric_bounds(f.constraint):
                    high = numeric_bounds(f.constraint)[1]
                    for row in self._rows_with(submission, table, f):
                        typo = row[f.kobo_key] + row[f.kobo_key][-1]  # a key pressed twice
                        if high is not None and int(typo) > high:
                            row[f.kobo_key] = typo
                            return kind
        required = [f for f in self.dictionary.main_table.fields
                    if f.required and f.xlsform_type == "text" and f.kobo_key in submission]
        if required:
            del submission[required[0].kobo_key]
            return "missing_required"
        return "none"

    def _rows_with(self, submission: dict[str, Any], table: Table, f: Field) -> Iterator[dict[str, Any]]:
        if not table.is_repeat:
            if f.kobo_key in submission:
                yield submission
            return
        for row in submission.get(table.repeat_key, []):
            if f.kobo_key in row:
                yield row

    # -- submissions ------------------------------------------------------------------
    def submission(self, index: int, submission_id: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:{self.dictionary.form_id}:{index}")
        started = SURVEY_START + dt.timedelta(days=rng.randint(0, 80), minutes=rng.randint(0, 600))
        ended = started + dt.timedelta(minutes=rng.randint(12, 55), seconds=rng.randint(0, 59))
        received = ended + dt.timedelta(hours=rng.randint(0, 72), minutes=rng.randint(0, 59))
        enumerator = ENUMERATORS[rng.randrange(len(ENUMERATORS))]
        times = {
            "start": started.isoformat(timespec="milliseconds") + MALI_UTC_OFFSET,
            "end": ended.isoformat(timespec="milliseconds") + MALI_UTC_OFFSET,
            "today": started.date().isoformat(),
            "deviceid": device_id(enumerator),
            "username": enumerator,
        }
        answers: dict[str, Any] = {}
        context = _Context(self.dictionary, {})
        sex = "female" if rng.random() < 0.3 else "male"
        self._fill(self.dictionary.main_table, rng, context, answers, times, sex, {})
        if rng.random() < self.mistake_rate:
            self._inject_mistake(answers, rng)
        instance = _uuid(rng)
        geolocation = [None, None]
        for f in self.dictionary.main_table.fields:
            if f.xlsform_type == "geopoint" and f.kobo_key in answers:
                lat, lon = answers[f.kobo_key].split()[:2]
                geolocation = [float(lat), float(lon)]
                break
        return {
            "_id": submission_id,
            "formhub/uuid": self.deployment.formhub_uuid,
            **answers,
            "__version__": self.deployment.version_uid,
            "meta/instanceID": f"uuid:{instance}",
            "meta/rootUuid": f"uuid:{instance}",
            "_xform_id_string": self.deployment.asset_uid,
            "_uuid": instance,
            # Listed as kpi lists them (kobo-api.md §4.3); the server puts its address for the placeholder.
            "_attachments": attachments_for(answers, self.media_keys, base=BASE_PLACEHOLDER,
                                            asset_uid=self.deployment.asset_uid, submission_id=submission_id,
                                            owner=DEFAULT_OWNER, formhub_uuid=self.deployment.formhub_uuid,
                                            root_uuid=f"uuid:{instance}"),
            "_status": "submitted_via_web",
            "_geolocation": geolocation,
            "_submission_time": received.isoformat(timespec="seconds"),
            "_validation_status": {},
            "_submitted_by": enumerator,
        }


def generate_submissions(dictionary: FieldDictionary, deployment: Deployment, count: int, seed: int = 2026,
                         first_id: int = 1, id_step: int = 1, mistake_rate: float = 0.02) -> list[dict[str, Any]]:
    generator = SubmissionGenerator(dictionary, deployment, seed=seed, mistake_rate=mistake_rate)
    return [generator.submission(i, first_id + i * id_step) for i in range(count)]


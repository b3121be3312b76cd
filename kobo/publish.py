"""Publishing a built form to KoboToolbox, as kobo-api.md §6 records.

1. Find the project that already holds this form (see ``find_asset``).
2. Import the ``.xlsx``: ``POST /api/v2/imports/`` (multipart) with ``library=false``
   (omitting it makes kpi create a library *block*, §6.2), and with
   ``destination=<asset URL>`` when the project exists, so its content is replaced
   (kpi records a new version) instead of a second project being created.
3. Poll ``GET /api/v2/imports/{uid}/`` until ``complete`` or ``error`` (kpi imports
   asynchronously, in Celery).
4. Deploy: ``POST .../deployment/ {"active": true}`` for a project never deployed,
   ``PATCH .../deployment/ {"version_id": <new version>, "active": true}`` to redeploy
   an existing one (§6.3). ``active`` must be sent: kpi defaults it to false (archived).

Publishing the same form twice updates the same project (found again in step 1).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from forms.build import BuiltForm
from forms.errors import FormError
from kobo.client import KoboClient
from kobo.content import form_id_of
from kobo.errors import BadRequest, KoboError, ProjectNotFound

log = logging.getLogger(__name__)
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class PublishError(KoboError):
    """Publishing a form to KoboToolbox failed."""


class FormRejected(PublishError, FormError):
    """KoboToolbox could not import or deploy the form itself (a FormError and a KoboError)."""


@dataclass(frozen=True)
class PublishResult:
    asset_uid: str
    version_id: str
    created: bool  # a new project was created
    redeployed: bool  # an existing deployment was replaced by the new version


def find_asset(client: KoboClient, form_id: str, existing_uid: str | None = None) -> dict[str, Any] | None:
    """The asset detail of the project holding ``form_id``, or None if there is none.

    With ``existing_uid``, that project (it must exist, and must not hold another form).
    Otherwise every survey the token's account can see is listed
    (``q=asset_type:survey``; the list has no ``content``), and each one's detail is read
    to compare its content settings ``form_id``/``id_string`` with ``form_id``: one GET per
    survey, so pass ``existing_uid`` on accounts with many projects. Several matches are an
    error: the caller must say which one to update.
    """
    if existing_uid:
        try:
            asset = client.get_asset(existing_uid)
        except ProjectNotFound:
            raise PublishError(f"impossible de publier le formulaire '{form_id}' dans le projet {existing_uid} : "
                               f"ce projet n'existe pas sur {client.base_url} (ou n'est pas partagé avec le compte "
                               f"du jeton)",
                               f"cannot publish form '{form_id}' to project {existing_uid}: no such project "
                               f"on {client.base_url} (or it is not shared with the token's account)") from None
        held = form_id_of(asset.get("content"))
        if held and held != form_id:
            raise PublishError(f"le projet {existing_uid} contient le formulaire '{held}', pas '{form_id}' : "
                               f"publier remplacerait un autre formulaire ; vérifiez l'uid du projet",
                               f"project {existing_uid} holds form '{held}', not '{form_id}': publishing would "
                               f"replace another form; check the project uid")
        return asset
    matches = []
    url: str | None = "api/v2/assets/"
    params: dict[str, Any] | None = {"q": "asset_type:survey", "limit": 1000}
    while url:
        page = client.get_json(url, params)
        for item in page.get("results", []):
            if item.get("asset_type", "survey") != "survey":
                continue
            detail = client.get_asset(item["uid"])
            if form_id_of(detail.get("content")) == form_id:
                matches.append(detail)
        url, params = page.get("next"), None
    if len(matches) > 1:
        uids = ", ".join(m["uid"] for m in matches)
        raise PublishError(f"plusieurs projets contiennent le formulaire '{form_id}' ({uids}) : dites lequel "
                           f"mettre à jour (--asset avec l'uid du projet)",
                           f"several projects hold form '{form_id}' ({uids}): say which one to update "
                           f"(--asset with the project uid)")
    return matches[0] if matches else None


def publish_form(client: KoboClient, built: BuiltForm, *, poll_interval: float = 1.0, timeout: float = 300,
                 existing_uid: str | None = None) -> PublishResult:
    """Imports ``built.xlsx`` into KoboToolbox and deploys it (see the module docstring)."""
    label = f"'{built.form_id}' (version {built.version})"  # the form's name in both languages
    asset = find_asset(client, built.form_id, existing_uid)
    if asset is None:
        log.info("Publication de %s : aucun projet ne le contient, création d'un projet / publishing %s: no "
                 "project holds it yet, creating one", label, label)
    else:
        deployed = asset.get("deployed_version_id") or "-"
        log.info("Publication de %s : mise à jour du projet %s (version déployée %s) / publishing %s: updating "
                 "project %s (deployed version %s)", label, asset["uid"], deployed, label, asset["uid"], deployed)
        settings = (asset.get("content") or {}).get("settings")
        if asset.get("has_deployment") and isinstance(settings, dict) and str(settings.get("version")) == built.version:
            log.warning("le projet %s contient déjà la version %s du formulaire '%s' : il est redéployé tel quel ; "
                        "augmentez la version (feuille settings) quand le formulaire change, pour que les "
                        "téléphones voient un nouveau formulaire / project %s already holds version %s of form "
                        "'%s': it is redeployed as is; bump the settings version when the form changes, so devices "
                        "see a new form", asset["uid"], built.version, built.form_id, asset["uid"], built.version,
                        built.form_id)

    imported_uid = _import(client, built, label, asset, poll_interval, timeout)
    if asset is not None and imported_uid != asset["uid"]:
        raise PublishError(f"KoboToolbox a importé {label} dans le projet {imported_uid}, pas dans "
                           f"{asset['uid']} comme demandé",
                           f"KoboToolbox imported {label} into project {imported_uid}, not into "
                           f"{asset['uid']} as asked")
    detail = client.get_asset(imported_uid)
    if detail.get("asset_type") != "survey":
        kind = detail.get("asset_type")
        raise PublishError(f"KoboToolbox a importé {label} comme {kind!r} (projet {imported_uid}), pas comme "
                           f"formulaire (survey) : impossible de le déployer",
                           f"KoboToolbox imported {label} as a {kind!r} (project {imported_uid}), not a survey: "
                           f"it cannot be deployed")
    version_id = detail["version_id"]
    deployment, redeploy = _deploy(client, imported_uid, version_id, bool(detail.get("has_deployment")), label)
    if deployment.get("version_id") != version_id or not deployment.get("active"):
        reported = f"version {deployment.get('version_id')}, active={deployment.get('active')}"
        raise PublishError(f"KoboToolbox n'a pas déployé la version {version_id} de {label} (projet "
                           f"{imported_uid}) : il indique {reported}",
                           f"KoboToolbox did not deploy version {version_id} of {label} (project "
                           f"{imported_uid}): it reports {reported}")
    log.info("%s publié : projet %s, version %s %s / published %s: project %s, version %s %s", label,
             imported_uid, version_id, "redéployée" if redeploy else "déployée", label, imported_uid, version_id,
             "redeployed" if redeploy else "deployed")
    return PublishResult(asset_uid=imported_uid, version_id=version_id, created=asset is None,
                         redeployed=redeploy)


def _import(client: KoboClient, built: BuiltForm, label: str, asset: dict[str, Any] | None,
            poll_interval: float, timeout: float) -> str:
    """POSTs the import and polls it; the uid of the created or updated asset."""
    fields = {"library": "false", "name": f"{built.form_id}.xlsx"}
    if asset is not None:
        fields["destination"] = asset.get("url") or f"{client.base_url}api/v2/assets/{asset['uid']}/"
    try:
        task = client.post_multipart("api/v2/imports/", fields,
                                     {"file": (f"{built.form_id}.xlsx", built.xlsx, XLSX_TYPE)})
    except KoboError as error:
        raise type(error)(f"impossible d'importer {label} : {error.fr}", f"cannot import {label}: {error.en}") from error
    task_uid = task["uid"]
    log.info("Import de %s : tâche %s / importing %s: import task %s", label, task_uid, label, task_uid)
    deadline = time.monotonic() + timeout
    while True:
        task = client.get_json(f"api/v2/imports/{task_uid}/")
        status = task.get("status")
        messages = task.get("messages") or {}
        if status == "complete":
            done = (messages.get("updated") or messages.get("created") or [{}])[0]
            if not done.get("uid"):
                raise PublishError(f"l'import de {label} (tâche {task_uid}) s'est terminé sans nommer le projet "
                                   f"créé ou mis à jour : {messages}",
                                   f"the import of {label} (task {task_uid}) completed without naming "
                                   f"the project it created or updated: {messages}")
            return str(done["uid"])
        if status == "error":
            said = f"{messages.get('error_type', 'error')}: {messages.get('error', 'no message')}"
            raise FormRejected(f"KoboToolbox n'a pas pu importer {label} (tâche {task_uid}) : {said}",
                               f"KoboToolbox could not import {label} (task {task_uid}): {said}")
        if time.monotonic() >= deadline:
            raise PublishError(f"l'import de {label} (tâche {task_uid}) est toujours '{status}' après "
                               f"{timeout:g} s ; KoboToolbox est peut-être occupé : publiez de nouveau plus tard "
                               f"(le même projet sera mis à jour)",
                               f"the import of {label} (task {task_uid}) is still '{status}' after {timeout:g} s; "
                               f"KoboToolbox may be busy: publish again later (the same project is updated)")
        log.debug("Import task %s is %s; polling again in %.1f s", task_uid, status, poll_interval)
        time.sleep(poll_interval)


def _deploy(client: KoboClient, uid: str, version_id: str, has_deployment: bool,
            label: str) -> tuple[dict[str, Any], bool]:
    """(the deployment, whether an existing deployment was replaced)."""
    path = f"api/v2/assets/{uid}/deployment/"
    try:
        if not has_deployment:
            try:
                return client.post_json(path, {"active": True, "version_id": version_id}), False
            except BadRequest as error:
                if "Use PATCH" not in str(error):  # deployed meanwhile by someone else: redeploy
                    raise
        return client.patch_json(path, {"version_id": version_id, "active": True}), True
    except BadRequest as error:
        # pyxform/ODK validation failures come back as 400 {"error": "..."} (§6.3)
        raise FormRejected(f"KoboToolbox n'a pas pu déployer {label} (projet {uid}) : {error.fr}",
                           f"KoboToolbox could not deploy {label} (project {uid}): {error.en}") from error
    except KoboError as error:
        raise type(error)(f"impossible de déployer {label} (projet {uid}) : {error.fr}",
                          f"cannot deploy {label} (project {uid}): {error.en}") from error

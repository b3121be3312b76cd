"""A local server seeded with generated submissions of our own forms (demo and tests)."""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import Any

from forms.build import BuiltForm
from kobo.content import content_from_source
from kobo.generate import Deployment, SubmissionGenerator
from kobo.server import LocalKoboServer, ServedAsset

_ALPHABET = string.ascii_letters + string.digits


def kpi_uid(prefix: str, seed_text: str, length: int = 21) -> str:
    """A stable kpi-style uid (``a`` + 21 characters for assets, ``v`` for versions)."""
    digest = int.from_bytes(hashlib.sha256(seed_text.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return prefix + "".join(chars)


def deployment_for(built: BuiltForm) -> Deployment:
    return Deployment(
        asset_uid=kpi_uid("a", f"asset:{built.form_id}"),
        version_uid=kpi_uid("v", f"version:{built.form_id}:{built.version}"),
        formhub_uuid=hashlib.md5(built.form_id.encode()).hexdigest(),
    )


def seeded_asset(built: BuiltForm, count: int, seed: int = 2026, first_id: int = 1, id_step: int = 1,
                 mistake_rate: float = 0.02) -> ServedAsset:
    deployment = deployment_for(built)
    generator = SubmissionGenerator(built.dictionary, deployment, seed=seed, mistake_rate=mistake_rate)
    submissions = [generator.submission(i, first_id + i * id_step) for i in range(count)]
    return ServedAsset(uid=deployment.asset_uid, name=built.dictionary.title, content=content_from_source(built.source),
                       version_uid=deployment.version_uid, formhub_uuid=deployment.formhub_uuid,
                       submissions=submissions)


@dataclass
class SeededServer:
    server: LocalKoboServer
    token: str
    assets: dict[str, ServedAsset]  # by form_id


def seeded_server(forms: list[BuiltForm], count: int, seed: int = 2026, token: str | None = None,
                  new_style: bool = True, mistake_rate: float = 0.02, port: int = 0,
                  **server_options: Any) -> SeededServer:
    """A server holding ``count`` submissions of each form. ``_id`` is unique across the
    server and interleaved between forms, as on a real KoboToolbox server.
    ``server_options`` go to LocalKoboServer (``faults``, ``passwords``, ``attachment_size``...)."""
    token = token or secrets.token_hex(20)
    assets = {
        built.form_id: seeded_asset(built, count, seed=seed, first_id=1000 + k, id_step=len(forms),
                                    mistake_rate=mistake_rate)
        for k, built in enumerate(forms)
    }
    server = LocalKoboServer({token: "terrain_demo"}, list(assets.values()), new_style=new_style, port=port,
                             **server_options)
    return SeededServer(server=server, token=token, assets=assets)

"""Errors from talking to KoboToolbox, each with a message a data manager can act on."""

from __future__ import annotations

from forms.errors import TerrainError


class KoboError(TerrainError):
    """A KoboToolbox request failed."""

    transient = False


class TokenRejected(KoboError):
    """401: the server does not accept the token."""


class ProjectNotFound(KoboError):
    """404: no such project, or the token's account cannot see it."""


class PermissionDenied(KoboError):
    """403: the account can see the project but may not do this."""


class NotDeployed(KoboError):
    """400: the project exists but has never been deployed."""


class ApiGone(KoboError):
    """410: the endpoint was removed (the old v1 API)."""


class BadRequest(KoboError):
    """400: the server refused the request's parameters."""


class ServerUnavailable(KoboError):
    """5xx, 429, a timeout, a dropped connection or a broken body: worth retrying."""

    transient = True

"""Terrain's error hierarchy.

Every error a user can meet derives from TerrainError and carries a message a data
manager can act on: what happened, where, and what to do next. Data managers work in
French, so a message is given in French first and complete in English beside it
(``str(error)`` is "français / English"; the command line prints them on two lines).
The rooms subclass these (forms: FormError; kobo: KoboError; warehouse: WarehouseError).
"""

from __future__ import annotations


class TerrainError(Exception):
    """Base of every error Terrain reports to a person: ``TerrainError(fr, en)``."""

    def __init__(self, fr: str, en: str) -> None:
        super().__init__(fr, en)  # both in args: the error survives pickling (Prefect task results)
        self.fr = fr
        self.en = en

    def __str__(self) -> str:
        return f"{self.fr} / {self.en}"


class FormError(TerrainError):
    """An XLSForm cannot be read, compiled or understood."""


class ExpressionError(FormError):
    """An XLSForm expression (relevant, constraint, choice_filter) cannot be parsed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager or `kill` stopping Terrain), raised by the command line's
    handler: handled as Ctrl+C is (what was committed is kept, the run is 'interrupted'),
    but exits with 143 rather than 130."""

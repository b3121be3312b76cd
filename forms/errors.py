"""Terrain's error hierarchy.

Every error a user can meet derives from TerrainError and carries a message a data
manager can act on: what happened, where, and what to do next. The rooms subclass
these (forms: FormError; kobo: KoboError; warehouse: WarehouseError).
"""

from __future__ import annotations


class TerrainError(Exception):
    """Base of every error Terrain reports to a person."""


class FormError(TerrainError):
    """An XLSForm cannot be read, compiled or understood."""


class ExpressionError(FormError):
    """An XLSForm expression (relevant, constraint, choice_filter) cannot be parsed."""

"""Validation: pandera schemas from the field dictionary, hand-written rules, quarantine."""

from validation.schemas import FormValidator, TableSchema

__all__ = ["FormValidator", "TableSchema"]

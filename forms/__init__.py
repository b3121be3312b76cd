"""Forms: XLSForm sources, their compilation with pyxform and the field dictionary."""

from forms.build import BuiltForm, build_form, project_form, project_forms, write_build
from forms.dictionary import Choice, Field, FieldDictionary, Table, build_dictionary
from forms.errors import FormError, TerrainError

__all__ = [
    "BuiltForm", "Choice", "Field", "FieldDictionary", "FormError", "Table", "TerrainError",
    "build_dictionary", "build_form", "project_form", "project_forms", "write_build",
]

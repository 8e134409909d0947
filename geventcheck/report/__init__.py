"""Renderers: pure functions from the report model to text, plus the atomic writer."""

from ._json import render_json, write_atomic
from ._terminal import render_table

__all__ = ["render_json", "render_table", "write_atomic"]

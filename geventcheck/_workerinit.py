"""Imported by a real worker with ``-I``: the scenario's ``[settings]`` after ``django.setup()``.

Celery imports ``-I`` modules after its Django fixup has run ``django.setup()`` and before
``worker_init`` receivers (which may use the settings) run. See ``_workerenv``.
"""

from __future__ import annotations

import json
import os

from ._workerenv import SETTINGS_ENV


def apply_settings() -> None:
    overrides = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    if not overrides:
        return
    import django

    django.setup()  # already done by Celery's fixup; a no-op then
    from .runner._appload import override_django_settings

    override_django_settings(overrides)


apply_settings()

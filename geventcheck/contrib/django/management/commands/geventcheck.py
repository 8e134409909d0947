"""`python manage.py geventcheck audit|doctor ...` with the project's settings filled in.

The Celery app comes from ``-A``, else the ``GEVENTCHECK_APP`` setting; an
audit gets ``--django-settings`` from the settings module in use.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from geventcheck._cli import main


class Command(BaseCommand):  # type: ignore[misc]  # django ships no type hints
    help = "Is each Celery task safe on a gevent worker? (geventcheck audit|doctor ...)"

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the arguments to geventcheck untouched: it has its own parser."""
        args = list(argv[2:])
        if args and args[0] in ("audit", "doctor") and not {"-A", "--app"} & set(args):
            app = getattr(settings, "GEVENTCHECK_APP", None)
            if not app:
                raise CommandError("give -A proj, or set GEVENTCHECK_APP = 'proj' in settings")
            args[1:1] = ["-A", str(app)]
        if args and args[0] == "audit" and "--django-settings" not in args:
            args[1:1] = ["--django-settings", os.environ["DJANGO_SETTINGS_MODULE"]]
        main(args)

    def handle(self, *args: Any, **options: Any) -> None:
        """Only reached through call_command(); the command line goes through run_from_argv."""
        self.run_from_argv(["manage.py", "geventcheck", *args])

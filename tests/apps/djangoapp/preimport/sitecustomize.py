"""Imports django.db before gevent patches, as a custom entry point or a .pth hook can.

Only in the audited process (the parent never patches, so it does not matter there).
gevent's patch_all() inspects every live object, which makes Django load its settings:
they must be named before it runs.
"""

import os

if "GEVENTCHECK_CHILD" in os.environ:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")
    import django.db  # noqa: F401

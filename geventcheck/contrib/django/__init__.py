"""Add ``"geventcheck.contrib.django"`` to INSTALLED_APPS for ``manage.py geventcheck``."""

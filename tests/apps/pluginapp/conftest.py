"""Imported after gevent patched the process when pytest runs with --gevent-check."""

import pluginapp.tasks  # noqa: F401 - the app's modules, imported as a suite does
from gevent import monkey

PATCHED_AT_IMPORT = monkey.is_module_patched("socket")


def pytest_report_header(config):
    return [f"pluginapp conftest: socket patched at import: {PATCHED_AT_IMPORT}"]

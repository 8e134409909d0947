"""Per-"thread" state: a native thread-local (shared by every greenlet) and its fix.

The audit patches before importing the app, so ``threading.local()`` here is already
gevent's greenlet-local. A local created before patching (an app imported by a custom
entry point, a library imported early) is the native ``_thread._local``; gevent's
original stands in for one.
"""

import threading
import time
import uuid

from gevent.monkey import get_original

from .celery_app import app

NativeLocal = get_original("_thread", "_local")

native_state = NativeLocal()  # the hazard: one object for all greenlets
greenlet_state = threading.local()  # the fix: one per greenlet once patched

native_config = NativeLocal()
native_config.region = "eu-west-1"


class _Session(NativeLocal):
    user = None


class Registry:
    session = _Session()  # a subclass of the native local, held by a class


@app.task
def native_local_token():
    """Stores a token, waits, reads it back: another task may have overwritten it."""
    token = uuid.uuid4().hex
    native_state.token = token
    time.sleep(0.02)
    return native_state.token == token


@app.task
def greenlet_local_token():
    token = uuid.uuid4().hex
    greenlet_state.token = token
    time.sleep(0.02)
    return greenlet_state.token == token


@app.task
def native_local_region():
    """Only reads the native local, set at import: still one object for every task."""
    return native_config.region


@app.task
def native_subclass_user():
    user = uuid.uuid4().hex
    Registry.session.user = user
    time.sleep(0.02)
    return Registry.session.user == user

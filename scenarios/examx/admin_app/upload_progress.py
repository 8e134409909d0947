"""Progress of bulk uploads, kept in the cache so the admin UI can poll it."""

import time

from django.core.cache import cache

INDEX_KEY = "upload-progress:index"


def key(upload_id):
    return f"upload-progress:{upload_id}"


def update(upload_id, **fields):
    state = cache.get(key(upload_id)) or {"upload_id": upload_id, "started": time.time()}
    state.update(fields, touched=time.time())
    cache.set(key(upload_id), state, timeout=7 * 24 * 3600)
    index = cache.get(INDEX_KEY) or []
    if upload_id not in index:
        cache.set(INDEX_KEY, [*index, upload_id], timeout=None)
    return state


def get(upload_id):
    return cache.get(key(upload_id))

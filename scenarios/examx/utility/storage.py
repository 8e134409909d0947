"""Uploads to the object store (MinIO in every deployment) over its S3-style HTTP API."""

import os

import requests
from django.conf import settings


def upload_file(path, key, content_type="application/octet-stream"):
    """PUT a local file (absolute, or relative to the working directory) under ``key``."""
    with open(path, "rb") as fh:
        body = fh.read()
    url = f"{settings.STORAGE_URL}/{settings.STORAGE_BUCKET}/{key}"
    reply = requests.put(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    reply.raise_for_status()
    return url, os.path.getsize(path)

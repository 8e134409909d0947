"""Imports psycopg before gevent patches the audited process, as an early import in a
custom entry point would: psycopg then chooses its C wait function for good."""

import psycopg
import psycopg.waiting  # noqa: F401

"""Tiny apps for what the audit may claim: each module is one Celery app (-A certify.NAME)."""

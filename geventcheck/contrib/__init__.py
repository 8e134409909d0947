"""Integrations with the frameworks geventcheck's users already run."""

"""The two sides of an audit: the unpatched parent and the patched child it supervises."""

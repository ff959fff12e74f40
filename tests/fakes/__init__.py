"""Fake servers for the outside services (REFERENCE.md), driven by the real client libraries."""

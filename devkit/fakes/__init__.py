"""Fake servers for the outside services (REFERENCE.md), driven by the real client libraries; each
is a LoopbackServer (loopback.py), with one lifecycle."""

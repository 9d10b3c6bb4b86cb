"""Interop: one adapter per external checkpoint format."""

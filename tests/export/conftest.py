"""Helpers for the export tests; the tiny export itself is the session fixture ``tiny_export`` in tests/conftest.py."""

from __future__ import annotations


def trt_missing() -> str:
    from vaegan.export.trt import missing_requirements

    return missing_requirements()

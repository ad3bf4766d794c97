"""The error a user can fix: bad input, reported as one line and exit 2.

It lives apart from :mod:`templ_pipeline.io` so that modules which write files but read
no molecules (telemetry's textfile and target files) raise it without importing RDKit.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Unusable input: a file, record or argument the user can fix."""

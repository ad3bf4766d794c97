"""Screening campaigns: one template set against many query ligands, in one run (``templ screen``).

This package's modules are imported on demand: worker processes import only
``task`` and ``worker`` (RDKit and the scoring core), never the runner or the readers.
"""

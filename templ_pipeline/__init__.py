"""TEMPL: template-based protein-ligand pose selection on thread-limit-aware, instrumented worker pools."""

__version__ = "0.2.0"

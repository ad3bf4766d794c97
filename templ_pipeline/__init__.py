"""TEMPL: template-based protein-ligand pose selection on thread-limit-aware, instrumented worker pools."""

import logging

__version__ = "0.2.0"

# A library prints nothing unless the application configures logging (the Python convention): without a
# handler of its own, a warning from a ``templ.*`` or ``templ_pipeline.*`` logger would reach stdlib's
# last-resort handler, which writes it to stderr. The ``templ`` command configures its output itself.
for _name in ("templ", "templ_pipeline"):
    logging.getLogger(_name).addHandler(logging.NullHandler())
del _name

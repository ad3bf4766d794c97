"""``python -m templ_pipeline.cli``: the ``templ`` script (:func:`templ_pipeline.entry.main`)."""

import sys

from templ_pipeline.entry import main

if __name__ == "__main__":
    sys.exit(main())

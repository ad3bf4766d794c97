"""``python -m templ_pipeline.cli``: the ``templ`` script (:func:`templ_pipeline.entry.main`), left without the
interpreter's teardown (:func:`templ_pipeline.entry.leave`)."""

from templ_pipeline.entry import leave, main

if __name__ == "__main__":
    leave(main())

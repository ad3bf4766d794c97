"""``python -m templ_pipeline.cli``: the ``templ`` script (:func:`templ_pipeline.entry.run`)."""

from templ_pipeline.entry import run

if __name__ == "__main__":
    run()

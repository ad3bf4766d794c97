"""One build customisation: the wheel ships the dashboards' generated files, not their generators.

``dashboards/*.py`` write the Grafana dashboard JSON and the Prometheus rules (``make dashboards``)
with grafana-foundation-sdk, a test-only dependency: installed, they could not even be imported.
So the modules of ``templ_pipeline.dashboards`` stay out of the built package, and what
``templ dashboards export`` copies (``grafana/``, ``prometheus/``, ``compose/``) goes in as package
data. An editable install maps ``templ_pipeline.dashboards`` onto the checkout's ``dashboards/``
as before, so ``make dashboards`` and the tests import the generators from there.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

GENERATORS = "templ_pipeline.dashboards"


class BuildPyWithoutGenerators(build_py):
    """``build_py`` that builds no module of :data:`GENERATORS` (its package data is built as usual)."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        return [] if package == GENERATORS else super().find_package_modules(package, package_dir)


setup(cmdclass={"build_py": BuildPyWithoutGenerators})

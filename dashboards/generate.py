"""Write the dashboards' JSON (``make dashboards``), or check that the committed JSON is current.

    python -m dashboards.generate          # (re)write dashboards/grafana/dashboards/*.json
    python -m dashboards.generate --check  # exit 1 and name the stale files
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import executor_dashboard

OUTPUT_DIR = Path(__file__).parent / "grafana" / "dashboards"

#: file name -> builder of the dashboard written there
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    f"{executor_dashboard.UID}.json": executor_dashboard.build,
}


def render(build: Callable[[], Dashboard]) -> str:
    """The dashboard as the JSON text that is committed."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def stale(output_dir: Path = OUTPUT_DIR) -> list[Path]:
    """Files whose content differs from what the generator produces now."""
    return [output_dir / name for name, build in DASHBOARDS.items()
            if not (output_dir / name).is_file() or (output_dir / name).read_text() != render(build)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"{path} is out of date: run `make dashboards`", file=sys.stderr)
        return 1 if outdated else 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUTPUT_DIR / name).write_text(render(build))
        print(OUTPUT_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

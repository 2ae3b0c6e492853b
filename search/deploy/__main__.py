"""``python -m search.deploy RUN``: a run's point deployed as one process per tier
(:mod:`search.deploy.stream`)."""

from __future__ import annotations

import sys

from search.deploy.stream import main

if __name__ == "__main__":
    sys.exit(main())

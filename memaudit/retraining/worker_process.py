"""One emm worker process: ``python -P -m memaudit.retraining.worker_process JOB``, started by
``workers.PointPool``. A module of its own that the package never imports: ``-m`` on a module the
package has already imported (``workers``, through ``run``) would run it a second time, with
runpy's warning on every worker's stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from memaudit.retraining.workers import work

if __name__ == "__main__":
    work(Path(sys.argv[1]))

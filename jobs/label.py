"""Ray job entry point: the same flags as `segbatch run`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/label.py --input s3://bucket/images --output s3://bucket/run1 --model deeplabv3_resnet50

Inside a Ray job, RAY_ADDRESS points at the cluster, so the job joins it instead of
starting a local one. Exit status 2 means a job-level problem (bad input, model, weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import segbatch  # noqa: F401  (installed on the cluster by cluster.yaml's setup commands)
except ImportError:  # run from a checkout shipped with --working-dir
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

"""The records exporter's own process (see `_process`): started by `quotaflow serve`."""

import sys

from quotaflow.records._process import main

sys.exit(main(sys.argv[1:]))

"""`bigjax` as the multi-process tests run it: `python tests/multihost_helpers.py train ...`.

The same command line as `python -m bigjax.main`, with JAX's heartbeat timeout taken from the environment
(BIGJAX_TEST_HEARTBEAT_S) so that a test of a lost process waits seconds, not JAX's default 100.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax import main  # noqa: E402
from bigjax import partitioning  # noqa: E402

if __name__ == "__main__":
  if os.environ.get("BIGJAX_TEST_HEARTBEAT_S"):
    partitioning.HEARTBEAT_TIMEOUT_S = int(os.environ["BIGJAX_TEST_HEARTBEAT_S"])
  main.main([sys.argv[0]] + sys.argv[1:])

"""``python -m launch.k8s`` is ``python -m launch k8s``."""

import sys

from launch.k8s import main

sys.exit(main())

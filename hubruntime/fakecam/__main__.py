"""``python -m hubruntime.fakecam``: the same as ``hubruntime fakecam``."""

import sys

from hubruntime.fakecam.cli import main

sys.exit(main())

"""``python -m hubruntime`` is the same as the ``hubruntime`` console script."""

from hubruntime.cli import main

raise SystemExit(main())

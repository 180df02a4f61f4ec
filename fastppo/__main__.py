"""``python -m fastppo``: the same as the ``fastppo`` command."""

from .cli import main

raise SystemExit(main())

"""``python -m openledger.cli``: the ``openledger`` command."""

from openledger.cli import main

raise SystemExit(main())

"""``python -m shop``: the ``shop`` command."""

from shop.cli.main import main

raise SystemExit(main())

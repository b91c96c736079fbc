"""``python -m shop.cli``: the ``shop`` command."""

from shop.cli.main import main

raise SystemExit(main())

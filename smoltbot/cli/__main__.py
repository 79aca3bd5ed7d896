"""`python -m smoltbot.cli`: the `smoltbot` command without its console script."""

from smoltbot.cli.main import main

raise SystemExit(main())

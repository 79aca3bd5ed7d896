"""
The `smoltbot` operator command: `main` (argument parsing and dispatch), `check_config`, `reports`
(the agents and requests tables).
"""

from smoltbot.cli.main import main

__all__ = ["main"]

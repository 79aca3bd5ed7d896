"""
smoltbot: a self-hosted gateway between AI agents and the LLM provider APIs.

This module holds the version only; importing it must stay free of side effects
(no reactor installation), because the twistd plugin file imports it.
"""

__version__ = "0.1.0"

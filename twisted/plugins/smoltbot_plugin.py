"""twistd plugin: `twistd smoltbot`. Imports nothing heavy; the work is in `smoltbot.tap`."""

from twisted.application.service import ServiceMaker

smoltbot = ServiceMaker(
    "smoltbot",
    "smoltbot.tap",
    "Gateway between AI agents and the Anthropic, OpenAI and Gemini APIs",
    "smoltbot",
)

"""The models each provider is known to serve, as `/models.json` lists them (thinking-capable or not)."""

KNOWN_MODELS = {
    "anthropic": [
        {"id": "claude-sonnet-4-20250514", "name": "Claude Sonnet 4", "thinking": True},
        {"id": "claude-3-5-sonnet-20241022", "name": "Claude 3.5 Sonnet", "thinking": True},
        {"id": "claude-haiku-4-5-20251001", "name": "Claude Haiku 4.5", "thinking": True},
        {"id": "claude-3-opus-20240229", "name": "Claude 3 Opus", "thinking": False},
    ],
    "openai": [
        {"id": "gpt-5", "name": "GPT-5", "thinking": True},
        {"id": "gpt-5-mini", "name": "GPT-5 mini", "thinking": True},
        {"id": "gpt-4o", "name": "GPT-4o", "thinking": False},
        {"id": "o3", "name": "o3", "thinking": True},
        {"id": "o3-mini", "name": "o3-mini", "thinking": True},
    ],
    "gemini": [
        {"id": "gemini-2.5-pro", "name": "Gemini 2.5 Pro", "thinking": True},
        {"id": "gemini-2.5-flash", "name": "Gemini 2.5 Flash", "thinking": True},
        {"id": "gemini-3-pro", "name": "Gemini 3 Pro", "thinking": True},
        {"id": "gemini-3-flash", "name": "Gemini 3 Flash", "thinking": True},
    ],
}

"""
The JSON bodies of the gateway's own answers: `{"error","type","message"}` with a stable `type`
(DESIGN §1.2). Every layer that answers for itself (the site, the ops endpoints, the proxy)
uses these, so the shape is written once.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.web import server


def write_json(request: server.Request, status: int, body: Mapping[str, Any]) -> bytes:
    """Set status and JSON content type on `request` and return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def error_body(request: server.Request, status: int, error_type: str, error: str, message: str) -> bytes:
    """A gateway-made error: `{"error","type","message"}` with a stable `type` (DESIGN §1.2)."""
    return write_json(request, status, {"error": error, "type": error_type, "message": message})


"""
The resource tree's root. Provider paths (`/anthropic`, `/openai`, `/gemini`) are dispatched
straight to the provider resources, beside the Klein app that serves everything else, so the
hot path pays for no routing table; OPTIONS on any path is the CORS preflight.
"""

from __future__ import annotations

from typing import Mapping

from twisted.web import server
from twisted.web.resource import IResource, Resource

from smoltbot.http.ops import OpsApi


class GatewayRoot(Resource):
    """
    The root resource: CORS preflight for any path, provider paths to their resources, and
    everything else to the operational Klein app.
    """

    def __init__(self, ops: IResource, providers: Mapping[str, IResource] | None = None) -> None:
        super().__init__()
        self._ops = ops
        self._providers = {name.encode("ascii"): resource for name, resource in (providers or {}).items()}

    def getChildWithDefault(self, path: bytes, request: server.Request) -> IResource:
        if request.method == b"OPTIONS":
            return _Preflight()
        provider = self._providers.get(path)
        if provider is not None:
            return provider
        # Hand the whole path to Klein, which routes from the site root.
        request.postpath.insert(0, request.prepath.pop())
        return self._ops

    def render(self, request: server.Request) -> bytes:
        if request.method == b"OPTIONS":
            return _Preflight().render(request)
        return self._ops.render(request)


class _Preflight(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(204)
        return b""


def build_root(
    ops: OpsApi, providers: Mapping[str, IResource] | None = None
) -> GatewayRoot:
    """The resource tree: provider resources (if this role serves them) beside the ops app."""
    return GatewayRoot(ops.resource(), providers)


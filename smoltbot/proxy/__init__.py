"""
The streaming provider proxy: `/anthropic`, `/openai` and `/gemini` relayed to the providers
with full fidelity, flow control, timeouts and cancellation.

Modules, one concern each: `routing` (upstream URLs and path safety), `headers` (what crosses
the proxy), `upstream` (the pooled HTTP client), `relay` (one request's response, timeouts and
backpressure), `exchange` (the per-request record and the observer hook), `resource` (the
provider resources, checks, metrics and access log).
"""

from smoltbot.proxy.exchange import Exchange, ExchangeObserver, ObserverFactory
from smoltbot.proxy.resource import ProviderProxy, ProviderResource
from smoltbot.proxy.upstream import UpstreamClient

__all__ = ["Exchange", "ExchangeObserver", "ObserverFactory", "ProviderProxy", "ProviderResource", "UpstreamClient"]

"""
The HTTP surface: `site` (site and request: request ids, CORS, body cap, in-flight count),
`root` (the resource tree), `ops` (health, metrics, models and the 404), `errors` (the gateway's
JSON error bodies).
"""

"""
What the daemon knows and says about its own state: `probes` (readiness checks), `license` (the
license judgement), `heartbeat` (the deployment heartbeat).
"""

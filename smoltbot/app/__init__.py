"""
The daemon as a whole: `lifecycle` (start order, signals, readiness notification, the draining shutdown).
"""

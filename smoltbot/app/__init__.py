"""
The daemon as a whole: `compose` (which parts a process has, one builder per feature),
`lifecycle` (start order, listener, signals, the draining shutdown) and `sdnotify` (readiness
notification to systemd).
"""

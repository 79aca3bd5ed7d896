"""
Small helpers every part of the daemon shares: `periodic` (loops that survive a failing run).
"""

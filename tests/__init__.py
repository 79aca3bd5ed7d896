"""Trial tests for smoltbot."""

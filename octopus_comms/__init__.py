"""Octopus Deploy comms server: polling Tentacles connect here over WebSockets and take work.

The wire protocol core shared with the `tentacle` agent lives in `octopus_comms.halibut`.
"""

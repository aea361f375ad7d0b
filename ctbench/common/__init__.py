"""Plumbing every room uses: atomic file writes and strict YAML reading.

Nothing here knows about tracks, models or runs; it sits below everything else. (User errors
live in ``ctbench.errors``, beside ``ctbench.strategy``, because submitted strategies raise them.)
"""

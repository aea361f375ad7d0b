"""How schedules are found and measured: plugin loading, probes, transfer matrices and the
order search, and ctbench's own measuring strategies.

The public API a submitted strategy imports stays ``ctbench.strategy``; this room holds what
resolves and serves strategies. It imports only ``tracks`` and the common modules.
"""

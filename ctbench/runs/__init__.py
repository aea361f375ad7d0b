"""One run: the loop that asks a strategy for stages, trains, evaluates every task after
every stage and writes ``result.json``; its config, metrics and provenance.
"""

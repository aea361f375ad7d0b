"""What is benchmarked: tracks, task specs and their data, generators, tokenizer, model
specs and sources, and the engine settings a track declares.

First room of the flow (track → strategy → scoring → training → run → results): it imports
only ``ctbench.common``, ``ctbench.errors`` and ``ctbench.strategy``.
"""

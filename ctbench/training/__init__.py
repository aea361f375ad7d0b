"""How a model is trained or merged: the one engine (GRPO, SFT, their blend), losses, the
rollout backends and the fast Llama path, compute bookkeeping, merging, and building the
tiny base.

It uses ``scoring`` for rewards and ``tracks`` for tasks and settings; it knows nothing
of runs or results.
"""

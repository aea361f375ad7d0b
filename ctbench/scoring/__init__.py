"""How an output is scored: rule rewards, judges for open-ended tasks, and the sandbox that
runs model-written code.

It imports only ``tracks`` (task items) and the common modules, so a reward can be tested
without a model.
"""

"""ctbench: does the order of multi-task RL post-training change the outcome?

A benchmark harness that trains a base model on several tasks under one *strategy*
(joint, random order, ...), evaluates every task after every stage and records the
accuracy matrix, transfer/forgetting metrics, entropy and compute as a result JSON.
"""

__version__ = "0.1.0"

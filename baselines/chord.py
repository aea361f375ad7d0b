"""chord: one stage whose loss blends SFT into on-policy RL (CHORD, arXiv 2508.11408).

L = (1 - mu_t) * L_GRPO + mu_t * L_SFT, where L_SFT weights each expert token by
phi = p(1 - p) (CHORD-phi) and mu_t follows warm-up → cosine decay → valley (CHORD-mu).
The expert rows take ``expert_share`` of each step's sequences. The per-step mu trace is
recorded in the result's stage trace.
"""

from collections.abc import Iterator

from ctbench.strategy import Stage, Strategy, StrategyContext


class Chord(Strategy):
    """SFT on expert demonstrations blended into GRPO with a scheduled weight mu."""

    name = "chord"
    version = "1"
    defaults = {
        "mu_peak": 0.1,
        "mu_valley": 0.1,
        "warmup_frac": 0.0,
        "decay_frac": 0.0,
        "expert_share": 0.2,
        "phi": True,
    }

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        mixture = {task: 1.0 for task in ctx.task_names}
        yield Stage(
            mixture=mixture,
            steps=ctx.budget,
            objective="blend",
            name="chord",
            hparams=dict(self.params),
        )

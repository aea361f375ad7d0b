"""Model merging through mergekit (the ``merge`` strategy and any strategy that yields a Merge).

mergekit works on checkpoints on disk, so a merge reads the branch checkpoints the run kept
and writes the merged model to a new folder; methods that combine *task vectors* (TIES,
DARE, task arithmetic) merge against the track's base checkpoint. We call mergekit in
process (``run_merge`` with a validated ``MergeConfiguration``) rather than re-implementing
TIES/DARE: the benchmark's merge baseline should be the merge researchers actually use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ctbench.errors import UserError
from ctbench.strategy import MERGE_METHODS

# Methods ctbench has tested on its checkpoints; each maps to whether it needs the base.
METHODS: dict[str, bool] = {method: method != "linear" for method in MERGE_METHODS}
_DENSITY_METHODS = {"ties", "dare_ties", "dare_linear"}


def merge_configuration(
    sources: Sequence[Path],
    base: Path,
    *,
    method: str,
    weights: Sequence[float] | None,
    density: float | None,
    options: Mapping[str, Any],
    dtype: str = "float32",
) -> dict[str, Any]:
    """The mergekit YAML (as a dict) for one merge; checked here so errors name our fields."""
    if method not in METHODS:
        raise UserError(
            f"unknown merge method {method!r}; expected one of {', '.join(METHODS)}",
            where="merge.method",
        )
    if weights is not None and len(weights) != len(sources):
        raise UserError(
            f"expected one weight per source ({len(sources)}), got {len(weights)}",
            where="merge.weights",
        )
    if density is not None and not 0.0 < density <= 1.0:
        raise UserError(f"expected a density in (0, 1], got {density!r}", where="merge.density")
    models = []
    for index, path in enumerate(sources):
        parameters: dict[str, float] = {"weight": float(weights[index]) if weights else 1.0}
        if method in _DENSITY_METHODS:
            parameters["density"] = float(density if density is not None else 0.5)
        models.append({"model": str(path), "parameters": parameters})
    config: dict[str, Any] = {"merge_method": method, "models": models, "dtype": dtype}
    if METHODS[method]:
        config["base_model"] = str(base)
    if options:
        config["parameters"] = dict(options)
    return config


def merge_checkpoints(
    sources: Sequence[Path],
    base: Path,
    out: Path,
    *,
    method: str,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Merge ``sources`` (checkpoint folders) into ``out``; returns the mergekit config used.

    DARE drops parameters at random: mergekit seeds its draw from ``seed``, so the same run
    seed gives the same merge. The global torch RNG is restored afterwards, because
    mergekit seeds it globally and a merge must not shift the random stream of later stages.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = merge_configuration(
        sources, base, method=method, weights=weights, density=density, options=options or {}
    )
    try:
        validated = MergeConfiguration.model_validate(config)
    except Exception as exc:  # pydantic's ValidationError: a bad option from the strategy
        raise UserError(f"mergekit refused the configuration: {exc}", where="merge") from exc
    rng_state = torch.random.get_rng_state()
    verbosity = hf_logging.get_verbosity()
    # mergekit loads with transformers' deprecated ``torch_dtype``: silence that warning here.
    hf_logging.set_verbosity_error()
    try:
        run_merge(
            validated,
            str(out),
            options=MergeOptions(device="cpu", copy_tokenizer=False, random_seed=seed, quiet=True),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        torch.random.set_rng_state(rng_state)
    return config

"""Real mergekit merges of real tiny checkpoints (trained a step apart), on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctbench.errors import UserError
from ctbench.scoring.rewards import build_reward
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.merging import merge_checkpoints
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import ensure_base_checkpoint, load_base


@pytest.fixture(scope="module")
def checkpoints(tiny_track, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two genuinely different fine-tunes of the base: an SFT step on math, one on qa."""
    folder = tmp_path_factory.mktemp("merge")
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    paths = []
    for task, seed in (("math", 1), ("qa", 2)):
        model, tokenizer, _ = load_base(tiny_track)
        engine = Engine(
            model,
            tokenizer,
            tiny_track.tasks,
            rewards,
            HFRollout(tokenizer),
            rl=tiny_track.spec.rl,
            sft=tiny_track.spec.sft,
            meter=ComputeMeter(),
        )
        engine.train_stage({task: 1.0}, "sft", 2, seed)
        model.save_pretrained(folder / task)
        paths.append(folder / task)
    return paths[0], paths[1], ensure_base_checkpoint(tiny_track)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def test_linear_merge_of_two_checkpoints_is_their_average(checkpoints, tmp_path):
    a, b, base = checkpoints
    merge_checkpoints([a, b], base, tmp_path / "linear", method="linear")
    merged, sa, sb = _state(tmp_path / "linear"), _state(a), _state(b)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the inputs really differ
    for key in sa:
        torch.testing.assert_close(merged[key], (sa[key] + sb[key]) / 2, rtol=0, atol=1e-7)


# ------------------------------------------------- task-vector methods, by hand
# Two checkpoints made from the base by adding seeded Gaussian task vectors: continuous
# values (no magnitude ties for TIES' trimming) whose signs disagree about half the time, so
# the sign election decides real elements. Expected merges are written out below from the
# papers' definitions, in float64, and compared with what mergekit wrote.
WEIGHTS = (1.0, 0.5)
DENSITY = 0.5


@pytest.fixture(scope="module")
def task_vectors(tiny_track, tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("vectors")
    base = ensure_base_checkpoint(tiny_track)
    paths = []
    for name, seed in (("a", 11), ("b", 12)):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.01 * noise)
        model.save_pretrained(folder / name)
        paths.append(folder / name)
    return paths[0], paths[1], base


def _vectors(task_vectors) -> tuple[dict, list[dict]]:
    a, b, base = task_vectors
    base_state = _state(base)
    taus = []
    for path in (a, b):
        state = _state(path)
        taus.append({k: (state[k] - base_state[k]).double() for k in base_state})
    return base_state, taus


def _merged_delta(path: Path, base_state: dict) -> dict[str, torch.Tensor]:
    merged = _state(path)
    return {k: merged[k].double() - base_state[k].double() for k in base_state}


def test_task_arithmetic_adds_the_weighted_task_vectors(task_vectors, tmp_path):
    a, b, base = task_vectors
    merge_checkpoints([a, b], base, tmp_path / "ta", method="task_arithmetic", weights=WEIGHTS)
    base_state, taus = _vectors(task_vectors)
    got = _merged_delta(tmp_path / "ta", base_state)
    for key in base_state:  # θ = θ_base + Σ_i w_i τ_i (no normalisation)
        expected = WEIGHTS[0] * taus[0][key] + WEIGHTS[1] * taus[1][key]
        torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-6, msg=key)


def _trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1: keep the ⌊density·n⌋ (at least one) entries of largest magnitude."""
    k = max(1, int(density * tau.numel()))
    threshold = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def test_ties_trims_elects_signs_and_averages_the_agreeing(task_vectors, tmp_path):
    a, b, base = task_vectors
    merge_checkpoints(
        [a, b], base, tmp_path / "ties", method="ties", weights=WEIGHTS, density=DENSITY
    )
    base_state, taus = _vectors(task_vectors)
    got = _merged_delta(tmp_path / "ties", base_state)
    decided = 0
    for key in base_state:
        trimmed = [w * _trim(t[key], DENSITY) for w, t in zip(WEIGHTS, taus, strict=True)]
        elected = torch.where(sum(trimmed) >= 0, 1.0, -1.0)  # TIES step 2: sign of the sum
        numerator = torch.zeros_like(trimmed[0])
        divisor = torch.zeros_like(trimmed[0])
        for w, t in zip(WEIGHTS, trimmed, strict=True):  # step 3: mean of those agreeing
            agrees = torch.sign(t) == elected
            numerator += torch.where(agrees, t, 0.0)
            divisor += torch.where(agrees, w, 0.0)
        expected = numerator / torch.where(divisor == 0, 1.0, divisor)
        torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-6, msg=key)
        both = (trimmed[0] != 0) & (trimmed[1] != 0)
        decided += int((both & (torch.sign(trimmed[0]) != torch.sign(trimmed[1]))).sum())
    assert decided > 1000  # the election really decided conflicting elements


def _recover_drops(delta: torch.Tensor, taus: list[torch.Tensor]) -> list[torch.Tensor]:
    """Which entries an unrescaled DARE merge kept of each source, read off the merged value:
    each entry is one of the four sums w_a·k_a·τ_a + w_b·k_b·τ_b (k ∈ {0, 1}); the nearest
    one names the draw."""
    options = [(ka, kb) for ka in (0.0, 1.0) for kb in (0.0, 1.0)]
    values = torch.stack(
        [ka * WEIGHTS[0] * taus[0] + kb * WEIGHTS[1] * taus[1] for ka, kb in options]
    )
    pick = (values - delta).abs().argmin(dim=0)
    return [torch.tensor([o[i] for o in options])[pick].bool() for i in range(2)]


def _dare(task_vectors, out: Path, method: str, seed: int, rescale: bool) -> dict:
    a, b, base = task_vectors
    merge_checkpoints(
        [a, b],
        base,
        out,
        method=method,
        weights=WEIGHTS,
        density=DENSITY,
        options={"rescale": rescale},
        seed=seed,
    )
    return _merged_delta(out, _state(base))


def test_dare_drops_at_random_and_follows_its_seed(task_vectors, tmp_path):
    """DARE: each entry of each task vector is kept with probability `density` (dropped
    otherwise), then Σ w_i τ̃_i (dare_linear) or TIES' sign election over the τ̃_i (dare_ties,
    no division by the agreeing weights). The same seed draws the same drops, another seed
    a fresh draw; mergekit's default rescale (kept entries scaled so each tensor keeps its L1
    norm, ≈ 1/density) changes the values, not the draw."""
    base_state, taus = _vectors(task_vectors)
    drawn: dict[int, dict[str, list[torch.Tensor]]] = {}
    merged = {}
    for name, seed in (("s4", 4), ("again", 4), ("s5", 5)):
        merged[name] = got = _dare(task_vectors, tmp_path / name, "dare_linear", seed, False)
        drawn[seed] = {}
        for key in base_state:
            masks = _recover_drops(got[key], [t[key] for t in taus])
            expected = sum(
                w * torch.where(m, t[key], 0.0)
                for w, m, t in zip(WEIGHTS, masks, taus, strict=True)
            )
            torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-6, msg=key)
            drawn[seed][key] = masks
    assert all(torch.equal(merged["s4"][k], merged["again"][k]) for k in base_state)
    kept = [torch.cat([m[i].flatten() for m in drawn[4].values()]) for i in (0, 1)]
    n = kept[0].numel()
    for mask in kept:  # kept with probability `density`, independently per source
        assert abs(float(mask.double().mean()) - DENSITY) < 5 * (0.25 / n) ** 0.5
    both = float((kept[0] & kept[1]).double().mean())
    assert abs(both - DENSITY**2) < 5 * (DENSITY**2 * (1 - DENSITY**2) / n) ** 0.5
    other = torch.cat([m[0].flatten() for m in drawn[5].values()])
    agreement = float((other == kept[0]).double().mean())  # independent draws: half agree
    assert abs(agreement - 0.5) < 5 * (0.25 / n) ** 0.5

    ties = _dare(task_vectors, tmp_path / "ties", "dare_ties", 4, False)
    rescaled = _dare(task_vectors, tmp_path / "rescaled", "dare_linear", 4, True)
    for key in base_state:
        dropped = [
            w * torch.where(m, t[key], 0.0)
            for w, m, t in zip(WEIGHTS, drawn[4][key], taus, strict=True)
        ]
        elected = torch.where(sum(dropped) >= 0, 1.0, -1.0)
        expected = sum(torch.where(torch.sign(d) == elected, d, 0.0) for d in dropped)
        torch.testing.assert_close(ties[key], expected, rtol=0, atol=1e-6, msg=key)
        none = ~drawn[4][key][0] & ~drawn[4][key][1]
        assert torch.all(rescaled[key][none].abs() < 1e-6), key  # the same drops
        for i in (0, 1):
            alone = drawn[4][key][i] & ~drawn[4][key][1 - i]
            ratio = rescaled[key][alone] / dropped[i][alone]
            assert torch.all((ratio > 1.5) & (ratio < 2.7)), key  # ≈ 1 / density


def test_bad_merge_settings_name_the_field(checkpoints, tmp_path):
    a, b, base = checkpoints
    with pytest.raises(UserError, match=r"merge.method: unknown merge method 'avg'"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="avg")
    with pytest.raises(UserError, match=r"merge.weights: expected one weight per source"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="linear", weights=[1.0])
    with pytest.raises(UserError, match=r"merge.density"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="ties", density=0.0)

"""LoRA adapters through peft: wrapping, checkpointing, folding, and the KL reference.

Why peft and not hand-written low-rank layers: the adapters a user trains here must load in
every tool they use next (vLLM, TRL, mergekit through ``merge_and_unload``), and peft's
checkpoint format is what those tools read.

A run's model is either a plain ``PreTrainedModel`` or a peft model over one. Two rules
keep an interrupted run's resume identical to an uninterrupted one:

- A checkpoint holds only the adapters when the model under them is the track's untouched
  base (the common case: a curriculum trains one adapter across its stages, branches and
  probes start from the base). Loading such a checkpoint is base + adapters.
- Adapters over anything else (a merged model) are folded into full weights when their
  stage ends, in memory as on disk, so both paths continue from the same full model and
  the next stage puts fresh adapters on it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PreTrainedModel

from ctbench.errors import UserError
from ctbench.tracks.engine_settings import LoraSettings

ADAPTER_CONFIG = "adapter_config.json"
# Set on a model whose weights are the track's base, unchanged: adapters over it are saved
# alone. Kept as an attribute so copy.deepcopy (branches) carries it.
_ON_BASE = "_ctbench_on_track_base"


def mark_track_base(model: PreTrainedModel) -> PreTrainedModel:
    setattr(model, _ON_BASE, True)
    return model


def is_adapted(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def on_track_base(model: torch.nn.Module) -> bool:
    """True for a peft model whose frozen weights are the track's base checkpoint."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return bool(getattr(inner, _ON_BASE, False))


def lora_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )


def add_adapters(model: PreTrainedModel, settings: LoraSettings, seed: int) -> PeftModel:
    """Fresh adapters on ``model`` (in place), initialised from ``seed`` alone.

    peft draws A from the global torch generator (B starts at zero, so the model's output is
    unchanged); the draw runs inside ``fork_rng`` so it neither depends on nor shifts the
    stream a stage's sampling uses."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in present]
    if missing:
        raise UserError(
            f"the model has no module named {', '.join(missing)} (its linear layers: "
            f"{', '.join(sorted(_linear_names(model)))})",
            where="model.lora.target_modules",
        )
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, lora_config(settings))


def check_target_modules(folder: Path, settings: LoraSettings, where: str) -> None:
    """Refuse adapter targets the checkpoint in ``folder`` has no module for, before a run
    folder exists. Reads only the safetensors headers (tensor names), not the weights."""
    present = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                parts = key.split(".")
                if len(parts) >= 2 and parts[-1] == "weight":
                    present.add(parts[-2])
    missing = [m for m in settings.target_modules if m not in present]
    if present and missing:
        raise UserError(
            f"the model has no module named {', '.join(missing)} (modules with weights: "
            f"{', '.join(sorted(present))})",
            where=where,
        )


def _linear_names(model: torch.nn.Module) -> set[str]:
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def folded(model: torch.nn.Module) -> PreTrainedModel:
    """The full-weight model a peft model computes (W + scale · B A per adapted layer), as a
    new model; ``model`` itself is left as it was."""
    if not isinstance(model, PeftModel):
        return model  # type: ignore[return-value]
    full = copy.deepcopy(model).merge_and_unload()
    if hasattr(full, _ON_BASE):
        delattr(full, _ON_BASE)  # its weights are no longer the base's
    return full


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every weight under full fine-tuning, the adapters under
    LoRA (peft freezes the rest)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in trainable_parameters(model))
    return {"total": total, "trainable": trainable}


@contextlib.contextmanager
def reference_weights(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` as its frozen weights (adapters off): the KL reference of a LoRA run
    without a second copy of the model in memory."""
    if not isinstance(model, PeftModel):
        raise TypeError("only a peft model has adapters to switch off")
    with model.disable_adapter():
        yield


def save_checkpoint(model: torch.nn.Module, folder: Path) -> None:
    """Adapters alone over the track's base, full weights otherwise (see the module doc)."""
    if isinstance(model, PeftModel) and not on_track_base(model):
        model = folded(model)
    model.save_pretrained(folder)


def load_checkpoint(folder: Path, base: Path, device: str) -> PreTrainedModel:
    """A checkpoint written by :func:`save_checkpoint`: base + adapters (trainable), or full
    weights. ``base`` is the track's base checkpoint folder."""
    adapters = (folder / ADAPTER_CONFIG).exists()
    full = AutoModelForCausalLM.from_pretrained(base if adapters else folder, dtype=torch.float32)
    if adapters or folder.resolve() == base.resolve():
        mark_track_base(full)
    if not adapters:
        return full.to(device)
    return PeftModel.from_pretrained(full, folder, is_trainable=True).to(device)

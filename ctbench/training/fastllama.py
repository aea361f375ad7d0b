"""A lean decoding path for Llama-family rollouts, reading the model's own weights.

Why hand-written: for the tiny track, a rollout is 13 forward calls on a [128, 1] batch, and
each Hugging Face forward spends most of its time outside arithmetic (building 4-D masks,
cache bookkeeping with ``torch.cat``, rotary tables, module dispatch): measured 85 ms of a
180 ms GRPO step. This path does the same arithmetic as ``modeling_llama`` (RMSNorm in
float32, rotary from the model's own ``inv_freq``, SDPA with the model's scaling, SiLU MLP)
on preallocated K/V buffers, with the q/k/v and gate/up weights fused once per rollout.
It is used only for configurations it reproduces exactly (:func:`supports`); anything else
goes through the generic Hugging Face cache path. ``tests/test_rollout.py`` checks its
greedy output against ``model.generate`` and its log-probs against a full HF forward.
``Qwen2ForCausalLM`` (the Qwen2.5 tracks' models) is Llama's arithmetic plus biases on q/k/v
and an optional sliding window: projection biases are read from the modules themselves, and
a sliding-window layer is refused (``tests/test_qwen2_lean.py``).

Training reuses the same layer arithmetic in :func:`grouped_completion_logits` (each GRPO
group's prompt computed once), with autograd: full fine-tuning differentiates the fused
weights; LoRA keeps peft's low-rank path ``x Wᵀ + s · (x Aᵀ) Bᵀ`` on the adapters' own
parameters, so no full-size weight gradient is ever formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedModel, Qwen2ForCausalLM

# The model classes whose forward this module reproduces (given :func:`supports`'s checks).
_FAMILY = (LlamaForCausalLM, Qwen2ForCausalLM)

_PROJECTIONS = (
    ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("mlp", ("gate_proj", "up_proj", "down_proj")),
)


def _plain_linear(module: object) -> bool:
    """A ``torch.nn.Linear`` itself, not a subclass or a wrapper: this module reads only
    ``.weight``, so a quantized linear (or a LoRA layer outside decoding, see
    :func:`_lora_linear`) would otherwise be silently computed as the bare base weight."""
    return type(module) is torch.nn.Linear


def _lora_linear(module: object, *, dropout_free: bool = False) -> bool:
    """A peft LoRA linear that this module can compute: one active plain adapter (no DoRA or
    other variant, no adapter bias) over a plain linear, not merged. Decoding reads it as one
    weight, ``W + scale · B A``; training (``dropout_free``) computes peft's own
    ``base(x) + B(A(x)) · scale`` and so also needs the adapter's dropout to be the identity
    (peft's choice for ``lora_dropout`` 0): a dropout mask would draw from the RNG."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # peft is optional for full fine-tuning
        return False
    if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear:
        return False
    active = module.active_adapters
    if len(active) != 1 or module.merged or active[0] not in module.lora_A:
        return False
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or module.use_dora.get(name, False):
        return False
    if dropout_free and type(module.lora_dropout[name]) is not torch.nn.Identity:
        return False
    return module.lora_B[name].bias is None


def _weight(module) -> torch.Tensor:
    """The weight a linear computes with: its own, or a LoRA layer's base plus peft's own
    ``get_delta_weight`` (the arithmetic of ``merge_and_unload``, so decoding equals
    ``generate`` on the merged model token for token)."""
    if type(module) is torch.nn.Linear:
        return module.weight
    if module.disable_adapters:
        return module.base_layer.weight
    return module.base_layer.weight + module.get_delta_weight(module.active_adapters[0])


def _bias(module) -> torch.Tensor | None:
    """The bias a linear adds: its own, or a LoRA layer's base layer's (peft adds the base
    output, bias included, then the low-rank term)."""
    return module.bias if type(module) is torch.nn.Linear else module.base_layer.bias


def unwrapped(model: PreTrainedModel) -> PreTrainedModel:
    """The Llama-family model under a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and type(model) not in _FAMILY else model


def supports(model: PreTrainedModel, *, adapters: bool = False, training: bool = False) -> bool:
    """True when this module reproduces the model's forward exactly. ``adapters``: also read
    a peft model's LoRA layers (decoding fuses them into one weight per rollout; training,
    ``training=True``, keeps their low-rank path and needs them dropout-free)."""
    if adapters:
        model = unwrapped(model)
    if type(model) not in _FAMILY:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False  # a hook changes the module's output; only the module itself can apply it
    if not _plain_linear(model.lm_head) or type(model.model.embed_tokens) is not torch.nn.Embedding:
        return False

    def accepted(module: object) -> bool:
        return _plain_linear(module) or (adapters and _lora_linear(module, dropout_free=training))

    for layer in model.model.layers:
        for block, names in _PROJECTIONS:
            if not all(accepted(getattr(getattr(layer, block), n)) for n in names):
                return False
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    # Qwen2's sliding-window layers mask keys further back than the window; this module
    # attends to every earlier position, so it takes only full-attention layers.
    layer_types = getattr(config, "layer_types", None) or ()
    return (
        rope.get("rope_type", "default") == "default"
        and all(kind == "full_attention" for kind in layer_types)
        and not getattr(config, "use_sliding_window", False)
        and not getattr(config, "attention_dropout", 0.0)
        and config.hidden_act == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and float(getattr(model.model.rotary_emb, "attention_scaling", 1.0)) == 1.0
    )


class _Projection:
    """One or more linear layers computed as one: ``x Wᵀ + b`` over their stacked weights
    and biases (a layer without a bias contributes zeros), plus,
    for LoRA layers in training, ``s · (x Aᵀ) Bᵀ`` over their stacked A and block-diagonal B
    (a layer without an active adapter contributes a zero-width block). The low-rank term is
    peft's own expression (``lora_B(lora_A(x)) * scaling``), so the adapters' gradients are
    computed from rank-r products as in peft, never through a full-size weight gradient."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        down: torch.Tensor | None = None,
        up: torch.Tensor | None = None,
        scale: float | torch.Tensor = 1.0,
    ) -> None:
        self.weight, self.bias, self.down, self.up, self.scale = weight, bias, down, up, scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.down is None:
            return out
        low_rank = F.linear(F.linear(x, self.down), self.up)
        if isinstance(self.scale, torch.Tensor):
            # As peft's float scale: a low-precision product is multiplied in float32 and
            # rounded once (PyTorch's opmath for a scalar), not by a scale rounded first.
            return out + (low_rank.float() * self.scale).to(low_rank.dtype)
        return out + low_rank * self.scale


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Row-wise concatenation, skipping the copy for a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _stacked_bias(modules, weights: list[torch.Tensor]) -> torch.Tensor | None:
    """The layers' biases stacked as their weights are, zeros for a layer without one; None
    when no layer has a bias (Llama's default), so no addition is made."""
    biases = [_bias(m) for m in modules]
    if all(b is None for b in biases):
        return None
    return _stacked(
        [w.new_zeros(w.shape[0]) if b is None else b for b, w in zip(biases, weights, strict=True)]
    )


def _fused(modules) -> _Projection:
    """The projection a rollout decodes with: each layer's full weight (LoRA folded in)."""
    weights = [_weight(m) for m in modules]
    bias = _stacked_bias(modules, weights)
    return _Projection(_stacked(weights).detach(), None if bias is None else bias.detach())


def _low_rank(modules) -> _Projection:
    """The projection training differentiates: base weights (trainable under full
    fine-tuning, frozen under LoRA) and the active adapters' own A and B."""
    bases = [m.weight if type(m) is torch.nn.Linear else m.base_layer.weight for m in modules]
    weight, bias = _stacked(bases), _stacked_bias(modules, bases)
    adapted = [type(m) is not torch.nn.Linear and not m.disable_adapters for m in modules]
    if not any(adapted):
        return _Projection(weight, bias)
    downs, ups, scales = [], [], []
    for module, base, on in zip(modules, bases, adapted, strict=True):
        if on:
            name = module.active_adapters[0]
            downs.append(module.lora_A[name].weight)
            ups.append(module.lora_B[name].weight)
            scales.append((float(module.scaling[name]), base.shape[0]))
        else:
            downs.append(base.new_zeros((0, base.shape[1])))
            ups.append(base.new_zeros((base.shape[0], 0)))
            scales.append((None, base.shape[0]))
    values = {value for value, _ in scales if value is not None}
    if len(values) == 1:
        scale: float | torch.Tensor = values.pop()
    else:  # per-layer ranks or alphas: one scale per output row
        scale = torch.cat([base.new_full((rows,), value or 0.0) for value, rows in scales])
    up = ups[0] if len(ups) == 1 else torch.block_diag(*ups)
    return _Projection(weight, bias, _stacked(downs), up, scale)


class _Layer:
    """One decoder layer's projections, fused where that saves matmul calls. ``detach=False``
    is the training form: the fusion stays inside autograd, so gradients reach the model's
    own parameters (LoRA adapters through their low-rank path, see :class:`_Projection`)."""

    def __init__(self, layer, *, detach: bool = True) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        groups = (
            (attn.q_proj, attn.k_proj, attn.v_proj),
            (attn.o_proj,),
            (mlp.gate_proj, mlp.up_proj),
            (mlp.down_proj,),
        )
        if detach:
            with torch.no_grad():
                self.qkv, self.o, self.gate_up, self.down = (_fused(g) for g in groups)
        else:
            self.qkv, self.o, self.gate_up, self.down = (_low_rank(g) for g in groups)
        self.norm_in = layer.input_layernorm
        self.norm_post = layer.post_attention_layernorm


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    # As LlamaRMSNorm: normalise in float32, scale in the input dtype. For float32 models
    # that is exactly F.rms_norm, one fused op instead of five.
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, for :func:`_rotated_qkv`.

    Llama's rotary is ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``.
    Folding the minus sign into the table gives ``roll(x) * signed_sin`` with ``roll(x) =
    cat(x2, x1)``: IEEE multiplication is symmetric in sign, so ``x2 * -s == -x2 * s`` bit for
    bit, and one negation per layer (forward and backward) disappears."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotated_qkv(layer: _Layer, x, cos, sin_signed, heads: int, kv_heads: int, head_dim: int):
    """A layer's head: RMSNorm, the fused q/k/v projection, rotary on q and k.

    q and k are rotated together, as one [B, H + KV, S, D] view of the projection: rotary is
    elementwise, so each value is computed exactly as when rotating q and k apart, with
    half the kernel launches (forward and backward). ``sin_signed`` is :func:`signed_sin`."""
    batch, width, _ = x.shape
    qkv = layer.qkv(_rms_norm(x, layer.norm_in))
    qkv = qkv.view(batch, width, heads + 2 * kv_heads, head_dim).transpose(1, 2)
    qk, v = qkv.split([heads + kv_heads, kv_heads], dim=1)
    rolled = qk.roll(head_dim // 2, dims=-1)
    q, k = (qk * cos + rolled * sin_signed).split([heads, kv_heads], dim=1)
    return q, k, v


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) * up`` of the fused gate/up projection, with a backward that writes both
    halves' gradients into one buffer.

    Autograd's own graph (chunk, silu, mul) ends its backward with a ``cat`` of the two halves:
    a full copy of the widest activation of the layer, for nothing. This backward computes the
    same two expressions as autograd's ``MulBackward0`` and ``SiluBackward0`` (``grad * up``
    into ``silu_backward``, and ``grad * silu(gate)``), in place of the copy, so every bit of
    the gradient is unchanged (``tests/test_rollout.py`` checks it against autograd's)."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up, memory_format=torch.contiguous_format)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        torch.mul(grad, activated, out=grad_up)
        return grad_gate_up


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for the fused ``[..., 2 * I]`` gate/up projection."""
    if gate_up.requires_grad and torch.is_grad_enabled():
        return _SwiGLU.apply(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _layer_output(layer: _Layer, x, attended):
    """A layer's tail: output projection and residual, then the SiLU MLP and residual."""
    batch, width, _ = x.shape
    x = x + layer.o(attended.transpose(1, 2).reshape(batch, width, -1))
    gate_up = layer.gate_up(_rms_norm(x, layer.norm_post))
    return x + layer.down(swiglu(gate_up))


class LlamaDecoder:
    """Prefill once, then decode one token per call, for a batch of left-padded rows.

    A one-token decode step attends with plain matmul-softmax-matmul (``decode_attention=
    "matmul"``, the default), grouped-query models included: the query is viewed as
    [B, KV, G, D] against the keys' [B, KV, S, D], so query head ``h = i * G + j`` reads KV
    head ``i`` (as Hugging Face's ``repeat_kv``) without copying K/V G times.
    ``"sdpa"`` sends the step through ``scaled_dot_product_attention`` instead (kept for
    the measurement in the README and for tests). In bf16 every step takes SDPA."""

    def __init__(
        self,
        model: PreTrainedModel,
        batch: int,
        capacity: int,
        *,
        decode_attention: str = "matmul",
    ) -> None:
        if decode_attention not in ("matmul", "sdpa"):
            raise ValueError(f"decode_attention: expected matmul or sdpa, got {decode_attention!r}")
        config = model.config
        self.model = model
        self.decode_attention = decode_attention
        self.layers = [_Layer(layer) for layer in model.model.layers]
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads  # query heads per KV head
        self.scale = self.head_dim**-0.5
        self.inv_freq = model.model.rotary_emb.inv_freq
        self.embed = model.model.embed_tokens.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.final_norm = model.model.norm
        param = self.embed
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [param.new_zeros(shape) for _ in self.layers]
        self.values = [param.new_zeros(shape) for _ in self.layers]
        self.valid = torch.zeros((batch, capacity), dtype=torch.bool, device=param.device)
        self.length = 0
        # cos/sin of every position this rollout reaches, once (as LlamaRotaryEmbedding).
        freqs = torch.arange(capacity, device=param.device).float()[:, None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_table = emb.cos().to(param.dtype)
        self.sin_table = signed_sin(emb.sin().to(param.dtype))

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_table[positions][:, None], self.sin_table[positions][:, None]

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Run ``ids`` [B, S] whose K/V go to columns ``length .. length+S``; ``mask`` is the
        boolean [B, 1, S, length+S] attention pattern. Returns the last position's logits."""
        width = ids.shape[1]
        start, end = self.length, self.length + width
        cos, sin = self._rotary(positions)
        # The matmul path's mask, inverted once for all layers. Only in float32: in bf16
        # (autocast or bf16 weights) plain matmul would round the scores and take their
        # softmax in bf16, where SDPA, as in the model's own forward, keeps them in float32.
        float32 = self.embed.dtype == torch.float32 and not torch.is_autocast_enabled(
            ids.device.type
        )
        matmul = width == 1 and self.decode_attention == "matmul" and float32
        blocked = ~mask if matmul else None
        batch = ids.shape[0]
        x = F.embedding(ids, self.embed)
        for index, layer in enumerate(self.layers):
            q, k, v = _rotated_qkv(layer, x, cos, sin, self.heads, self.kv_heads, self.head_dim)
            self.keys[index][:, :, start:end] = k
            self.values[index][:, :, start:end] = v
            keys, values = self.keys[index][:, :, :end], self.values[index][:, :, :end]
            if blocked is not None:
                # One query per row: plain matmul-softmax-matmul is ~4x cheaper on CPU than
                # SDPA's flash kernel at this size (measured), and computes the same thing.
                # GQA: the G query heads of a KV head form the rows of one [G, S] product
                # (G = 1 without GQA: the same shapes as a per-head product).
                grouped = q.view(batch, self.kv_heads, self.groups, self.head_dim)
                scores = torch.matmul(grouped, keys.transpose(-1, -2)) * self.scale
                scores = scores.masked_fill(blocked, float("-inf"))
                attended = torch.matmul(scores.softmax(dim=-1), values).view(
                    batch, self.heads, 1, self.head_dim
                )
            else:
                attended = F.scaled_dot_product_attention(
                    q,
                    keys,
                    values,
                    attn_mask=mask,
                    scale=self.scale,
                    enable_gqa=self.kv_heads != self.heads,
                )
            x = _layer_output(layer, x, attended)
        self.length = end
        return F.linear(_rms_norm(x[:, -1], self.final_norm), self.lm_head)

    def prefill(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        width = ids.shape[1]
        valid = attention_mask.bool()
        self.valid[: ids.shape[0], :width] = valid
        causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
        # A padding query attends to itself only, so no softmax row is empty (no NaN).
        mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        return self._forward(ids, positions, mask[:, None])

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self.valid[:, self.length] = True
        mask = self.valid[:, None, None, : self.length + 1]
        return self._forward(token[:, None], position, mask)

    def repeat_interleave(self, repeats: int) -> None:
        """Each prefilled row becomes ``repeats`` identical rows (a GRPO group)."""
        self.keys = [k.repeat_interleave(repeats, dim=0) for k in self.keys]
        self.values = [v.repeat_interleave(repeats, dim=0) for v in self.values]
        self.valid = self.valid.repeat_interleave(repeats, dim=0)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (finished rows leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.valid = self.valid[rows]


def _attention_block(layer: _Layer, x, cos, sin, heads, kv_heads, head_dim, scale, past_kv, mask):
    """One decoder layer with autograd: returns the new hidden states and this chunk's K/V."""
    q, k, v = _rotated_qkv(layer, x, cos, sin, heads, kv_heads, head_dim)
    keys, values = (
        (k, v)
        if past_kv is None
        else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
    )
    attended = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, scale=scale, enable_gqa=kv_heads != heads
    )
    return _layer_output(layer, x, attended), (k, v)


def grouped_completion_logits(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    group: int,
) -> torch.Tensor:
    """Logits predicting every completion token, with each group's shared prompt computed once.

    ``sequences`` are G consecutive rows per prompt (left-padded prompt, then completion).
    The prompt part runs on one row per group; its keys and values are repeated across the
    group (their gradients sum back through the repeat) and the completions attend to them.
    The arithmetic is a full forward's minus the (G - 1) duplicate prompt computations (for
    the tiny track's GRPO batches about a third of the training tokens) and minus the last
    completion token, whose output no logit needs. Returns [N, T, V]
    like ``model(...).logits[:, P - 1 : -1]``; gradients reach the model's parameters.
    ``model`` is a Llama or Qwen2 model or a peft model over one (see :func:`supports` with
    ``adapters=True, training=True``).
    """
    model = unwrapped(model)
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    scale = head_dim**-0.5
    layers = [_Layer(layer, detach=False) for layer in model.model.layers]
    inv_freq = model.model.rotary_emb.inv_freq.float()
    embed = model.model.embed_tokens.weight

    def rotary(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None].to(embed.dtype), signed_sin(emb.sin()[:, None].to(embed.dtype))

    device = sequences.device
    prompt_ids, prompt_valid = (
        sequences[::group, :prompt_length],
        attention_mask[::group, :prompt_length].bool(),
    )
    positions = (prompt_valid.long().cumsum(-1) - 1).clamp(min=0)
    eye_p = torch.eye(prompt_length, dtype=torch.bool, device=device)
    causal_p = torch.ones((prompt_length, prompt_length), dtype=torch.bool, device=device).tril()
    prompt_mask = ((causal_p & prompt_valid[:, None, :]) | eye_p)[:, None]

    # The last completion token predicts nothing and, being last, is attended to by nothing:
    # it is left out of the forward (1/T of the completion work, same result).
    completion = sequences[:, prompt_length:-1]
    width = completion.shape[1]
    completion_valid = attention_mask[:, prompt_length:-1].bool()
    completion_positions = (
        positions[:, -1:].repeat_interleave(group, 0) + 1 + torch.arange(width, device=device)
    )
    eye_c = torch.eye(width, dtype=torch.bool, device=device)
    causal_c = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    self_mask = (causal_c & completion_valid[:, None, :]) | eye_c
    to_prompt = prompt_valid.repeat_interleave(group, 0)[:, None, :].expand(-1, width, -1)
    completion_mask = torch.cat([to_prompt, self_mask], dim=-1)[:, None]

    cos_p, sin_p = rotary(positions)
    cos_c, sin_c = rotary(completion_positions)
    # The embedding's padding_idx (Llama and Qwen2 set it to the config's pad_token_id) only
    # withholds that row's gradient, as nn.Embedding does. It matters where the pad id is
    # also a real token: SmolLM2's pad is <|im_end|>, which ends every chat turn.
    padding_idx = model.model.embed_tokens.padding_idx
    x_p = F.embedding(prompt_ids, embed, padding_idx=padding_idx)
    x_c = F.embedding(completion, embed, padding_idx=padding_idx)
    for layer in layers:
        x_p, (k_p, v_p) = _attention_block(
            layer, x_p, cos_p, sin_p, heads, kv_heads, head_dim, scale, None, prompt_mask
        )
        if width > 0:
            shared = (k_p.repeat_interleave(group, 0), v_p.repeat_interleave(group, 0))
            x_c, _ = _attention_block(
                layer, x_c, cos_c, sin_c, heads, kv_heads, head_dim, scale, shared, completion_mask
            )
    # Position P-1 (the prompt's last token) predicts completion token 0; completion
    # positions 0..T-2 predict tokens 1..T-1.
    last_prompt = x_p[:, -1:].repeat_interleave(group, 0)
    hidden = torch.cat([last_prompt, x_c], dim=1)
    return F.linear(_rms_norm(hidden, model.model.norm), model.lm_head.weight)

"""The language model: HF LLaMA + tokenizer with [AUD] tokens + peft tuning + prompt injection.

Injection (ORIGINAL_M2UGEN.md §3): the top 3Q decoder layers each take one prompt vector
p (B, D). Because p is a single vector, the published gated attention term reduces to a
constant added to the attention output of every position:

    c = (Wo + ΔWo) · (tanh(g) ⊙_heads (Wv p))     with Wv the frozen base weight (no LoRA,
                                                   no bias) and g one gate per head.

It is added by a forward hook on `self_attn`, so it composes with SDPA, the KV cache,
batching and gradient checkpointing without touching transformers' code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM, PretrainedConfig, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from m2ugen.config import M2UGenConfig
from m2ugen.errors import ConfigError, loading
from m2ugen.modules.meta_llama import resolve_llm_path

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_tokenizer(path: str, audio_tokens: list[str]) -> PreTrainedTokenizerBase:
    """The LLM tokenizer with the [AUDi] tokens present (added after the base vocabulary)."""
    # never custom tokenizer code: an auto_map in tokenizer_config.json is refused
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    missing = [t for t in audio_tokens if t not in tokenizer.get_vocab()]
    if missing and len(missing) != len(audio_tokens):
        raise ConfigError(f"{path}: tokenizer has only some of {audio_tokens}; use a clean one")
    if missing:
        tokenizer.add_tokens(audio_tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(audio_tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ConfigError(f"{path}: [AUD] token ids {ids} are not consecutive")
    return tokenizer


INJECTION_KEY = "m2ugen_injection"  # the forward keyword the injection hooks read


@dataclass
class Injection:
    """What one call (a forward, or a whole generation) injects and captures.

    Args:
        prompts: (3Q, B, D) prompt vector per injected layer, or None for plain LLaMA.
        capture: when a list, the last decoder layer's output (before the final norm,
            (B, T, D)) of every forward is appended to it.
    """

    prompts: torch.Tensor | None = None
    capture: list[torch.Tensor] | None = None
    terms: dict[int, torch.Tensor] = field(default_factory=dict)  # no-grad cache per layer


class InjectedLLM(nn.Module):
    """peft-wrapped LlamaForCausalLM plus prefix queries and per-head injection gates.

    Args:
        model: the peft model around a LlamaForCausalLM.
        tokenizer: tokenizer holding the audio tokens.
        config: the M2UGen config (Q, audio tokens).
    """

    def __init__(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: M2UGenConfig) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        hf = self.hf_config
        n = config.injected_layers
        if n > hf.num_hidden_layers:
            raise ConfigError(f"query_layers={config.query_layers} needs {n} LLM layers; "
                              f"the LLM has {hf.num_hidden_layers}")
        self.num_heads = hf.num_attention_heads
        self.prefix_query = nn.Embedding(n, hf.hidden_size)
        self.gates = nn.Parameter(torch.zeros(n, self.num_heads))  # zero: inputs start unseen
        self.audio_token_ids = tokenizer.convert_tokens_to_ids(config.audio_tokens)
        # the hooks read the call's Injection from the forward's keyword arguments (the LLaMA
        # layers hand unknown keywords down to attention): no state on the module, so one
        # loaded model serves concurrent calls, and checkpointed layers recompute with the
        # same prompts during backward
        layers = self.layers
        first = len(layers) - n
        for j in range(n):
            layers[first + j].self_attn.register_forward_hook(self._make_hook(j),
                                                              with_kwargs=True)
        layers[-1].register_forward_hook(self._capture_hook, with_kwargs=True)

    @property
    def hf_config(self) -> PretrainedConfig:
        return self.model.get_base_model().config

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_base_model().model.layers

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def injected_term(self, j: int, prompt: torch.Tensor) -> torch.Tensor:
        """c for injected layer j and prompts (B, D) → (B, D)."""
        attn = self.layers[len(self.layers) - self.prefix_query.num_embeddings + j].self_attn
        v_proj, o_proj = attn.v_proj, attn.o_proj
        wv = v_proj.get_base_layer().weight if hasattr(v_proj, "get_base_layer") else v_proj.weight
        v = torch.nn.functional.linear(prompt.to(wv.dtype), wv)  # (B, kv_heads·hd)
        b = v.shape[0]
        hd = attn.head_dim
        v = v.view(b, -1, hd)
        if v.shape[1] != self.num_heads:  # grouped-query attention: share kv heads
            v = v.repeat_interleave(self.num_heads // v.shape[1], dim=1)
        gated = torch.tanh(self.gates[j]).to(v.dtype)[None, :, None] * v
        out = o_proj(gated.reshape(b, self.num_heads * hd))
        bias = o_proj.get_base_layer().bias if hasattr(o_proj, "get_base_layer") else o_proj.bias
        return out - bias if bias is not None else out

    def _make_hook(self, j: int):
        def hook(module, args, kwargs, output):
            injection = kwargs.get(INJECTION_KEY)
            if injection is None or injection.prompts is None:
                return output
            if torch.is_grad_enabled():  # training: recompute so gradients flow each time
                c = self.injected_term(j, injection.prompts[j])  # (B, D)
            else:  # generation: the term is constant while the prompts are
                if j not in injection.terms:
                    injection.terms[j] = self.injected_term(j, injection.prompts[j])
                c = injection.terms[j]
            attn_out = output[0]
            return (attn_out + c[:, None, :].to(attn_out.dtype), *output[1:])
        return hook

    @staticmethod
    def _capture_hook(module, args, kwargs, output):
        injection = kwargs.get(INJECTION_KEY)
        if injection is not None and injection.capture is not None:
            injection.capture.append(output[0] if isinstance(output, tuple) else output)

    def _mergeable(self) -> list[nn.Module]:
        # v_proj keeps its LoRA separate: the injection uses the frozen base Wv
        return [m for name, m in self.model.named_modules()
                if (isinstance(m, LoraLayer) and not name.endswith("v_proj"))
                or isinstance(m, TrainableTokensLayer)]

    def mergeable(self) -> bool:
        """Whether there is LoRA or new-token rows to fold in (`merge_for_inference`)."""
        return bool(self._mergeable())

    def merge_for_inference(self) -> None:
        """Fold LoRA deltas and the new-token rows into the base weights (fewer kernels per
        generated token; same outputs). Undone by `unmerge` before training."""
        for module in self._mergeable():
            if not module.merged:
                module.merge()

    def unmerge(self) -> None:
        for module in self._mergeable():
            if module.merged:
                module.unmerge()

    def forward(self, input_ids: torch.Tensor, injection: Injection | None = None, **kwargs):
        """The peft/HF forward; `injection` carries this call's prompts and capture list."""
        if injection is not None:
            kwargs[INJECTION_KEY] = injection
        return self.model(input_ids=input_ids, **kwargs)


def load_llm(path: str, tokenizer_path: str, config: M2UGenConfig,
             dtype: torch.dtype, device: torch.device | None = None) -> InjectedLLM:
    """Load LLaMA with zero-init biases on every projection, add [AUD] rows, wrap in peft.

    A Meta-format checkpoint directory is converted once to HF format (cached)."""
    path, tokenizer_path = resolve_llm_path(path), resolve_llm_path(tokenizer_path)
    with loading("LLM", path):
        raw, _ = PretrainedConfig.get_config_dict(path)
    if raw.get("model_type") != "llama":
        raise ConfigError(f"{path}: model_type is {raw.get('model_type')!r}; m2ugen injects "
                          "into LLaMA-architecture models only (model_type 'llama')")
    with loading("tokenizer", tokenizer_path):
        tokenizer = load_tokenizer(tokenizer_path, config.audio_tokens)
    # biases are M2UGen's trained tensors; missing from a base checkpoint, they start at 0
    # (transformers' load report would list every bias as MISSING: expected, so hushed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with loading("LLM", path):
            model = LlamaForCausalLM.from_pretrained(
                path, dtype=dtype, attention_bias=True, mlp_bias=True,
                device_map=None if device is None else {"": str(device)})
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.hidden_size != config.llm_dim:
        raise ConfigError(f"{path}: LLM width {model.config.hidden_size} but the model "
                          f"directory expects llm_dim={config.llm_dim}; name the matching LLM")
    return wrap_llm(model, tokenizer, config)


def wrap_llm(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase,
             config: M2UGenConfig) -> InjectedLLM:
    """A LlamaForCausalLM (with M2UGen's projection biases) → the injected, peft-wrapped LLM:
    rows for the [AUD] tokens, LoRA on every projection, trainable new-token rows."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = sorted(set(tokenizer.convert_tokens_to_ids(config.audio_tokens))
                 | set(config.extra_token_rows))
    token_modules = {"embed_tokens": ids}
    if not model.config.tie_word_embeddings:
        token_modules["lm_head"] = ids
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                      target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none",
                      trainable_token_indices=token_modules)
    peft_model = get_peft_model(model, lora)
    return InjectedLLM(peft_model, tokenizer, config)

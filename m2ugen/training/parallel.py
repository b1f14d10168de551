"""How the ranks share the model: `strategy: ddp` (every rank holds all of it; DDP averages
the gradients) or `strategy: fsdp` (FSDP2, `torch.distributed.fsdp.fully_shard`: each LLM
layer and the rest of the model are sharded over the ranks — frozen base weights, trained
tensors, their gradients and optimizer state — and all-gathered layer by layer for
compute). The frozen encoders are never sharded (they run outside the model's forward,
under no_grad) and the decoder is no submodule.

Checkpoints are the same under both: the trained tensors are gathered into full tensors
for `adapter.safetensors` and `trainer_state/`. FSDP's optimizer state is saved gathered
and keyed by parameter name (`optimizer_state`), so a run
resumes on any number of ranks; one process with `strategy: fsdp` trains unsharded and
keeps that format.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from m2ugen.errors import ConfigError
from m2ugen.training.config import RunConfig

log = logging.getLogger(__name__)


def check_hardware(cfg: RunConfig, device: torch.device, world: int = 1) -> None:
    """One line, before anything loads, for an option this machine cannot run."""
    if cfg.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ConfigError(f"optimizer=adamw8bit (bitsandbytes) runs on CUDA GPUs only; "
                              f"this run is on {device.type}: use optimizer=adamw")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError("optimizer=adamw8bit needs bitsandbytes: pip install "
                              f"bitsandbytes (import failed: {e}); or use optimizer=adamw") from e
    if cfg.cpu_offload and device.type != "cuda":
        raise ConfigError(f"cpu_offload=true moves FSDP's shards from the GPU to host memory; "
                          f"this run is on {device.type} already: drop cpu_offload")
    if cfg.cpu_offload and world == 1:
        raise ConfigError("cpu_offload=true offloads FSDP's shards; one process trains "
                          "unsharded: launch 2 or more ranks (NPROC=2 ./train_stageN.sh) or "
                          "drop cpu_offload")


def wrap(model: nn.Module, cfg: RunConfig, world: int, device: torch.device,
         groups: list[nn.Module] | None = None,
         unsharded: set[nn.Parameter] | None = None) -> nn.Module:
    """The module the loop calls: the model itself (one process), DDP, or the model
    sharded in place by fully_shard (strategy fsdp); optimizers are made after this.

    FSDP shards each of `groups` (innermost first; default: the LLM's layers) and then the
    rest of `model` as one group, never `unsharded` (default: the encoders, which run
    outside the model's forward)."""
    if world == 1:
        if cfg.strategy == "fsdp":
            log.info("strategy fsdp on one process: nothing to shard, the model trains whole "
                     "(the checkpoint keeps FSDP's format: resume on N ranks works)")
        return model
    if cfg.strategy == "ddp":
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type ==
                                       "cuda" else None, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
    what = "LLM layers" if groups is None else "groups"
    groups = list(model.llm.layers) if groups is None else groups
    unsharded = set(model.encoders.parameters()) if unsharded is None else unsharded
    for group in groups:  # one all-gather per group: peak = one group unsharded
        fully_shard(group, mesh=mesh, offload_policy=offload,
                    ignored_params=unsharded & set(group.parameters()) or None)
    # the rest (stages: adapters, projector, embeddings, head, prefix queries, gates) as one
    # group; what runs outside forward stays whole on every rank
    fully_shard(model, mesh=mesh, offload_policy=offload, ignored_params=unsharded or None)
    log.info("strategy fsdp: %d %s + the rest sharded over %d ranks%s", len(groups), what,
             world, " (CPU offload)" if cfg.cpu_offload else "")
    return model


def make_optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' AdamW8bit), weight decay on matrices only."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def make_scaler(cfg: RunConfig, autocast: torch.dtype | None, device: torch.device,
                world: int) -> torch.amp.GradScaler:
    """fp16's gradient scaler (disabled otherwise). Sharded gradients need every rank to
    agree on an overflow: FSDP's scaler all-reduces what each rank found."""
    enabled = autocast is torch.float16
    if enabled and cfg.strategy == "fsdp" and world > 1:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def full_trained(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clean name → full trained tensor. Sharded ones are all-gathered (a collective: every
    rank calls this) and moved to the CPU one by one, so no rank holds them all on a GPU."""
    out = {}
    for name, p in model.trained_parameters().items():
        t = p.detach()
        if hasattr(t, "full_tensor"):  # a DTensor shard
            t = t.full_tensor().cpu()
        out[name] = t
    return out


def optimizer_state(model: nn.Module, optim: torch.optim.Optimizer,
                    cfg: RunConfig) -> dict[str, Any]:
    """What trainer_state saves: DDP's own optimizer state dict, or under FSDP the state
    of each parameter gathered whole and keyed by its name, which any number of ranks can
    load (every rank calls this: the gathers are collectives). Written here rather than
    with torch.distributed.checkpoint's get/set_optimizer_state_dict: loading through
    those first runs a zero-gradient step that starts every tensor's Adam step count,
    those no batch had reached too, and the resumed run drifts from the uninterrupted."""
    if cfg.strategy != "fsdp":
        return optim.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for group in optim.param_groups:
        for p in group["params"]:
            if optim.state.get(p):
                state[names[id(p)]] = {k: _whole(v) for k, v in optim.state[p].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [names[id(p)] for p in g["params"]]} for g in optim.param_groups]
    return {"by_name": state, "param_groups": groups}


def _whole(v: Any) -> Any:
    if not isinstance(v, torch.Tensor):
        return v
    return (v.full_tensor() if hasattr(v, "full_tensor") else v.detach()).cpu().clone()


def load_optimizer_state(model: nn.Module, optim: torch.optim.Optimizer, state: dict[str, Any],
                         cfg: RunConfig) -> None:
    """The inverse of `optimizer_state`: each rank keeps its shard of the whole tensors."""
    if cfg.strategy != "fsdp":
        optim.load_state_dict(state)
        return
    if "by_name" not in state or len(state["param_groups"]) != len(optim.param_groups):
        raise ValueError("not an FSDP optimizer state of this run's parameter groups")
    by_name = dict(model.named_parameters())
    for group, saved in zip(optim.param_groups, state["param_groups"], strict=True):
        if len(saved["params"]) != len(group["params"]) or not all(
                by_name.get(n) is p for n, p in zip(saved["params"], group["params"],
                                                    strict=False)):
            raise ValueError("the trained tensors differ from the saved run's")
        group.update({k: v for k, v in saved.items() if k != "params"})
    for name, values in state["by_name"].items():
        p = by_name[name]
        optim.state[p] = {k: _like(p, v) for k, v in values.items()}


def _like(p: torch.Tensor, v: Any) -> Any:
    """A saved whole state tensor as `p` holds it: its shard (same mesh and placement),
    or on its device; scalars (Adam's step) stay as saved."""
    if not isinstance(v, torch.Tensor) or v.shape != p.shape:
        return v
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import DTensor, distribute_tensor

        # src_data_rank=None: every rank read the whole file, so no rank sends anything
        d = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements,
                              src_data_rank=None)
        local = p.to_local()
        if d.to_local().device != local.device:  # cpu_offload: shards live in host RAM
            d = DTensor.from_local(d.to_local().to(local.device), p.device_mesh, p.placements,
                                   run_check=False, shape=p.shape, stride=p.stride())
        return d
    return v.to(p.device)


def as_float(t: torch.Tensor | None) -> float | None:
    """A (possibly sharded) 0-dim tensor as a float: clip_grad_norm_ returns a DTensor
    under FSDP."""
    if t is None:
        return None
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()

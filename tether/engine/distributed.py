"""Data-parallel training under ``torchrun``: DDP, or FSDP2 for models that do not fit one device.

Every trainer gets this through the engine (``start_run`` joins the process group, the
``TrainingSession`` wraps the model, ``fit`` deals out the data), so a loop written for one
process runs unchanged on many:

    torchrun --nproc_per_node 8 -m tether.cli train sft --config recipe.yaml train.distributed=ddp

World. ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); without them the
world is one process and every function here is the identity (no process group, no tensors
made), so the single-process path costs nothing. The backend is NCCL when CUDA is available
(one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU.

The global batch does not depend on the world size. A step's ``grad_accum`` micro-batches
(``train.batch_size`` examples each) are dealt out whole: rank r takes micro-batches
r, r + W, r + 2W, ... so ``grad_accum`` must be a multiple of W. Each rank weights its
micro-batch losses by ``num_items / N_global``, where N_global is the item count (tokens, pairs)
summed over every rank's micro-batches (one all-reduce). DDP and FSDP average gradients over the
W ranks, so the engine scales each loss by W first:

    grad = (1/W) * sum_r  W * sum_{b in r} (n_b / N_global) * grad L_b
         = sum_b (n_b / N_global) * grad L_b          the one-process big-batch gradient

Strategies (``train.distributed``):
    ddp    a full copy of the model on every rank; gradients all-reduced once per optimizer step
           (``no_sync`` on the earlier micro-batches). Checkpoints are the single-process format.
    fsdp   FSDP2 (``fully_shard``): each decoder layer and the root sharded over the ranks,
           parameters all-gathered for a layer's forward/backward, gradients reduce-scattered.
           Memory per rank ~ (weights + grads + Adam state) / W + one layer's full weights.
           Every rank must then run the same number of forward/backward passes (the engine
           keeps them in lockstep); generation, whose step count differs per rank, runs with
           the parameters gathered once (``gathered_params``), so the full weights must fit.
    auto   ddp, unless weights + grads + Adam state (16 bytes per trainable parameter, 4 per
           frozen one) exceed half of one GPU's memory: then fsdp. On CPU always ddp.

Checkpoints are written by rank 0 as full (unsharded) state dicts in the single-process format,
after FSDP shards are gathered: a run saved under W ranks resumes under any other W.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from tether.errors import ConfigError, TetherError

Strategy = Literal["none", "ddp", "fsdp"]
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job. ``size == 1`` means no process group."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world: World | None = None


def init_distributed(timeout_minutes: float = 30.0) -> World:
    """Join the process group ``torchrun`` describes (once; later calls return the same World).

    Ranks other than 0 silence the shared console, so messages and progress bars appear once.
    """
    global _world
    if _world is not None:
        return _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _world = World(device=_default_device(0))
        return _world
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    _world = World(rank=rank, size=size, local_rank=local_rank, device=device)
    atexit.register(shutdown)  # NCCL warns when a process exits with its group alive
    if rank != 0:
        from tether.engine.progress import console

        console.quiet = True
    return _world


def world() -> World:
    """The current World (joining the process group on first use)."""
    return _world if _world is not None else init_distributed()


def shutdown() -> None:
    """Leave the process group (the end of a torchrun job); a no-op in one process.

    On gloo the ranks first meet at a barrier: a rank that tears its connections down while a peer
    is still using them can abort the peer ("terminate called without an active exception", seen
    once in CI). The barrier has a timeout, so a rank whose peers died does not hang here."""
    global _world
    if dist.is_initialized():
        if dist.get_backend() == "gloo":
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            except RuntimeError:  # a peer is gone or stuck: leave anyway
                pass
        dist.destroy_process_group()
    _world = None


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def is_main() -> bool:
    return world().is_main


def barrier() -> None:
    if world().enabled:
        dist.barrier()


# ---- strategy and model wrapping ---------------------------------------------------------

def choose_strategy(setting: str, model: torch.nn.Module) -> Strategy:
    """``train.distributed`` (auto | ddp | fsdp) -> what this world runs; "none" in one process."""
    current = world()
    if not current.enabled:
        return "none"
    if setting in ("ddp", "fsdp"):
        return setting  # type: ignore[return-value]
    if current.device.type != "cuda":
        return "ddp"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    needed = 16 * trainable + 4 * frozen  # fp32 weights + grads + Adam's two moments
    total = torch.cuda.get_device_properties(current.device).total_memory
    return "fsdp" if needed > total / 2 else "ddp"


def wrap_model(model: torch.nn.Module, strategy: Strategy) -> torch.nn.Module:
    """Move to this rank's device and wrap: DDP returns a wrapper, FSDP2 shards in place.

    Build the optimizer after this call, over ``unwrap(result).parameters()``: FSDP2 replaces
    the parameters with sharded DTensors.
    """
    current = world()
    model.to(current.device)
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # An LM's buffers (rotary tables) never change; syncing them in forward would make every
        # forward a collective, which evaluation on rank 0 alone could not join.
        return DistributedDataParallel(
            model, device_ids=[current.device.index] if current.device.type == "cuda" else None,
            forward_sync_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(current.device.type, (current.size,))
        for layer in _shard_units(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # embeddings, final norm, lm_head
        return model
    raise ConfigError(f"train.distributed must be auto, ddp or fsdp, got {strategy!r}")


def _shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (transformers names their class in ``_no_split_modules``)."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model without a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(_fsdp_units(model))


def _fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP-sharded modules of ``model``, root last. Never imports FSDP in one process (the
    import alone takes seconds)."""
    if not world().enabled:
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in unwrap(model).modules() if isinstance(m, FSDPModule)]


def gradient_sync(model: torch.nn.Module, sync: bool):
    """A context around one micro-batch's forward (DDP decides at forward time): with
    ``sync=False`` DDP skips the all-reduce of its backward, so gradients accumulate locally
    until the step's last micro-batch. FSDP reduce-scatters every backward (accumulating
    sharded gradients keeps its memory promise), so it is always synced."""
    from torch.nn.parallel import DistributedDataParallel

    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def gathered_params(model: torch.nn.Module) -> Iterator[None]:
    """Hold FSDP's full parameters on every rank for a while (generation, per-rank evaluation).

    Within the block forwards need no collectives, so ranks may run different numbers of them
    (each rank decodes its own prompts until they stop). Elsewhere a no-op.
    """
    units = _fsdp_units(model)
    if not units:
        yield
        return
    _lazy_init_root(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def _lazy_init_root(model: torch.nn.Module) -> None:
    """Make ``model`` FSDP's root now. FSDP2 takes the first unit to run a forward as the root; a
    forward through a submodule first (PPO samples with the policy inside the actor-critic) would
    make a decoder layer the root, and the real root's first forward would then fail."""
    from torch.distributed.fsdp import FSDPModule

    root = unwrap(model)
    if isinstance(root, FSDPModule):
        root._get_fsdp_state()._lazy_init()  # private, but the only hook; torch is pinned (2.13)


def on_main(model: torch.nn.Module, fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only (evaluation, saving the final model), with FSDP's parameters
    gathered so it sees whole weights; other ranks get None. In one process: ``fn()``."""
    with gathered_params(model):
        result = fn() if is_main() else None
    barrier()
    return result


def main_only(fn: Callable[[], T], what: str = "a step run by rank 0") -> T | None:
    """``fn()`` on rank 0 while the other ranks wait (a pipeline's generation or judging stage, which
    is not a trainer); other ranks get None. If ``fn`` raises on rank 0, every rank raises (the others
    a TetherError naming ``what``), so none waits at a barrier forever. One process: ``fn()``."""
    if not world().enabled:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the other ranks have heard of it
            error = exc
    if not all_true(error is None):  # also the barrier
        if error is not None:
            raise error
        raise TetherError(f"{what} failed on rank 0; its error is in rank 0's output")
    return result


def main_writes(path: Path, write: Callable[[], object], what: str) -> None:
    """``write()`` on rank 0 (``main_only``) unless ``path`` already exists; every rank returns once it
    does. All ranks look before any rank writes: a rank that looked only after rank 0 had written
    would skip the collective the others wait in, and the job would hang."""
    if all_true(Path(path).exists()):
        return
    main_only(write, what)


def save_final_model(model: torch.nn.Module, tokenizer, directory, *, config=None,
                     algorithm: str | None = None) -> Path:
    """``models.save_model`` from rank 0 with whole weights; every rank returns the path.
    With the run's ``config`` and ``algorithm`` ("sft", ...), ``README.md`` is its model card.

    FSDP: ``state_dict()`` holds shards (DTensors) even while parameters are gathered, so every
    rank first gathers the full state dict, and rank 0's ``save_pretrained`` is handed it."""
    from tether.engine.model_card import model_card
    from tether.models import save_model

    model = unwrap(model)
    card = model_card(config, algorithm, model) if config is not None and is_main() else None
    if not is_sharded(model):
        if is_main():
            save_model(model, tokenizer, directory, card=card)
        barrier()
        return Path(directory).expanduser().resolve()
    # named_parameters() lists a tied weight once (lm_head = embeddings): save it once, as usual.
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    state = {name: full_tensor(value) for name, value in model.state_dict().items() if name in names}
    if is_main():
        model.save_pretrained = functools.partial(type(model).save_pretrained, model, state_dict=state)
        try:
            save_model(model, tokenizer, directory, card=card)
        finally:
            del model.save_pretrained  # back to the class's method
    barrier()
    return Path(directory).expanduser().resolve()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch's tensors on ``device`` (the batch itself when that is the CPU)."""
    if device.type == "cpu":
        return batch
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def lockstep_passes(local: int, model: torch.nn.Module) -> int:
    """How many forward/backward passes this rank must make when it has ``local`` to make.

    FSDP: every rank the same number (its collectives run inside each pass), the most any rank
    has. DDP: at least one, so every rank joins the step's gradient all-reduce. Ranks pad with
    zero-weight passes. One process: ``local``."""
    if not world().enabled:
        return local
    if is_sharded(model):
        return all_reduce_max(local)
    return max(local, 1)


# ---- sharded data ------------------------------------------------------------------------

def local_micro_batches(micro_batches: Sequence[T]) -> list[T]:
    """This rank's share of a step's micro-batches: every W-th one, starting at its rank."""
    current = world()
    if len(micro_batches) % current.size:
        raise ConfigError(
            f"train.grad_accum ({len(micro_batches)}) must be a multiple of the number of processes "
            f"({current.size}): a step's micro-batches are dealt out whole to the ranks, so the global "
            f"batch stays batch_size x grad_accum whatever the world size. Set train.grad_accum="
            f"{current.size * -(-len(micro_batches) // current.size)} (and lower train.batch_size to "
            "keep the global batch).")
    return list(micro_batches[current.rank::current.size])


def local_block(items: Sequence[T], what: str = "prompts") -> tuple[list[T], slice]:
    """A contiguous 1/W block of ``items`` and its slice, so gathering in rank order restores
    the global order (rollouts: each rank generates for its block of prompts)."""
    current = world()
    if len(items) % current.size:
        raise ConfigError(f"{len(items)} {what} per step do not split evenly over {current.size} "
                          f"processes; use a multiple of {current.size}")
    size = len(items) // current.size
    block = slice(current.rank * size, (current.rank + 1) * size)
    return list(items[block]), block


# ---- collectives (identity in one process) -----------------------------------------------

def all_reduce_sum(value: float | int) -> float | int:
    """Sum of a number over ranks (same type back)."""
    if not world().enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return type(value)(tensor.item())


def all_reduce_sum_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Each tensor summed over ranks, in place, in one all-reduce (small plain tensors, e.g. the
    gradients of a module trained outside the DDP/FSDP wrapper). One process: as is."""
    if not world().enabled or not tensors:
        return
    flat = torch.cat([tensor.detach().reshape(-1) for tensor in tensors]).to(_comm_device())
    dist.all_reduce(flat)
    for tensor, summed in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
        tensor.copy_(summed.view_as(tensor))


def all_reduce_max(value: int) -> int:
    if not world().enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_true(flag: bool | torch.Tensor) -> bool:
    """Whether ``flag`` holds on every rank (e.g. a finite loss): all ranks decide alike."""
    flag = bool(flag)
    if not world().enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def sum_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks in one all-reduce. Callers pre-weight values by their share
    of the global batch, so the sum is the global weighted mean; a key a rank lacks (it had no
    data for it) counts 0 there."""
    if not world().enabled:
        return metrics
    keys = sorted(set().union(*gather_objects(sorted(metrics))))
    if not keys:
        return {}
    tensor = torch.tensor([float(metrics.get(k, 0.0)) for k in keys], dtype=torch.float64,
                          device=_comm_device())
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (small things: rewards, names, counts)."""
    if not world().enabled:
        return [obj]
    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def _comm_device() -> torch.device:
    return world().device  # NCCL needs CUDA tensors; gloo takes CPU ones


# ---- full (unsharded) state for checkpoints ----------------------------------------------

def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a sharded DTensor), on CPU."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded moments gathered: the single-process format."""
    state = optimizer.state_dict()
    if not world().enabled:
        return state
    state["state"] = {index: {key: full_tensor(value) if torch.is_tensor(value) else value
                              for key, value in entry.items()}
                      for index, entry in state["state"].items()}
    return state


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` placed as ``like`` is: sharded the same way for a DTensor, else on its device."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor) and full.dim() > 0:
        return distribute_tensor(full.detach().to(like.device_mesh.device_type), like.device_mesh,
                                 like.placements)
    return full.to(like.device)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Inverse of ``full_optimizer_state`` for this optimizer's (possibly sharded) parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(_is_dtensor(p) for p in params):
        return state
    sharded = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        sharded[index] = {key: shard_like(value, param) if torch.is_tensor(value) and value.shape == param.shape
                          else value for key, value in entry.items()}
    return {**state, "state": sharded}


def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)

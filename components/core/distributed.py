"""Data-parallel training under ``accelerate launch`` (torchrun underneath): one process per GPU, or
N CPU processes over gloo. Rank 0 is the main process: it alone logs to MLflow, writes metrics and
outputs and registers models; the other ranks train their share of every batch, then wait for it.

A single plain ``python -m components.stages.<stage>`` is rank 0 of a world of one, so nothing changes there.
``RLHF_ACCELERATE_CONFIG=<accelerate config file>`` makes the sft, reward, ppo and ppo_ptx stage commands
(as DVC and the flow run them) relaunch themselves under ``accelerate launch --config_file <file>``.
"""

from __future__ import annotations

import os
import sys

LAUNCH_ENV = "RLHF_ACCELERATE_CONFIG"
STAGES = ("sft", "reward", "ppo", "ppo_ptx")  # the stages that train data-parallel
MODULES = {"ppo_ptx": "ppo"}  # stages whose module has another name (``python -m components.stages.ppo ppo_ptx``)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def state():
    """accelerate's PartialState: joins the launcher's process group (nccl on GPUs, gloo without CUDA);
    a world of one when not launched. The Trainer makes the same one (``use_cpu`` = no CUDA)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def wait_for_main() -> None:
    """Barrier of all ranks (no-op in a single process)."""
    if world_size() > 1:
        state().wait_for_everyone()


def relaunch_under_accelerate(stage: str) -> None:
    """Replace this process by ``accelerate launch --config_file $RLHF_ACCELERATE_CONFIG -m components.stages.<module>``
    with the same arguments, when that variable is set and this is not already a launched rank."""
    config = os.environ.get(LAUNCH_ENV)
    if not config or stage not in STAGES or "WORLD_SIZE" in os.environ:
        return
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{LAUNCH_ENV}={config}: no such accelerate config file")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                              "-m", f"components.stages.{MODULES.get(stage, stage)}", *sys.argv[1:]])


def all_reduce_grads(model) -> None:
    """Sum every trainable gradient over the ranks (each rank's loss is already its share), in one
    flat buffer: one collective per call, not one per parameter tensor. A parameter a rank did not
    reach (no gradient) adds zeros."""
    import torch
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


def all_reduce_sum(values: list[float]):
    """The sum over the ranks of each of ``values`` (float64; unchanged in a world of one)."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=state().device)  # nccl reduces GPU tensors only
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order ([obj] in a world of one)."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out

"""needle.distributed: data-parallel training over MPI.

`comm` holds the MPI primitives (low in the stack: imports no nn), `data_parallel` the
parameter broadcast, gradient all-reduce and DistributedDataParallel, `overlap` the all-reduce
that runs during the backward (GradientReducer), `sharded` the ZeRO-1 optimizer step
(ShardedOptimizer), and `plugin` the trainer
plugin (above nn; imported by the CLI, not here).
"""
from .comm import (
    DEFAULT_BUCKET_BYTES, abort, abort_on_error, allgather_object, allreduce_array, barrier,
    broadcast_object, comm_stats, get_comm, init, install_excepthook, is_distributed,
    is_initialized, is_main_process, local_world_size, mpiexec_command, rank, reset_comm_stats,
    set_threads_per_rank, world_size,
)
from .data_parallel import (
    DistributedDataParallel, allreduce_gradients, broadcast_parameters, distributed_sampler,
    gradient_bytes,
)
from .overlap import GradientReducer
from .sharded import ShardedOptimizer

__all__ = [
    "init", "is_initialized", "is_distributed", "rank", "world_size", "is_main_process",
    "barrier", "get_comm", "allreduce_array", "broadcast_object", "allgather_object",
    "broadcast_parameters", "allreduce_gradients", "DistributedDataParallel",
    "distributed_sampler", "gradient_bytes", "install_excepthook", "abort", "abort_on_error",
    "mpiexec_command", "comm_stats", "reset_comm_stats", "DEFAULT_BUCKET_BYTES",
    "GradientReducer", "ShardedOptimizer", "local_world_size", "set_threads_per_rank",
]

"""Beyond one process: atom-balanced shards on Ray workers, each running the in-flight engine.

One Ray task per shard (one per GPU, or per CPU process), the model loaded once in each; records stream back
to the caller as structures finish, so the caller's journal makes a distributed run resumable like a single
one. ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` or starts a local one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ase import Atoms

from atomopt.frontends.engine import InFlightRelaxer, RelaxRecord
from atomopt.frontends.records import balanced_shards
from atomopt.optimizers import DEFAULT_OPTIMIZER


def _relax_shard(model: Any, optimizer: str, options: dict, items: list, threads: int) -> Iterator[RelaxRecord]:
    import torch

    torch.set_num_threads(threads)
    for record in InFlightRelaxer(model, optimizer, **options).run(items):  # noqa: UP028 - Ray's stream sends values
        yield record


def relax_on_ray(
    items: Sequence[tuple[int, Atoms | str]],
    model: Any,
    optimizer: str = DEFAULT_OPTIMIZER,
    *,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    threads_per_worker: int = 1,
    **options: Any,
) -> Iterator[RelaxRecord]:
    """Relax ``items`` on ``workers`` Ray workers (atom-balanced shards); yields records as they finish.

    ``model`` should be a name or path spec (each worker loads its own copy); model objects are pickled to
    the workers. Options as :class:`~atomopt.frontends.engine.InFlightRelaxer`.
    """
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("distributed runs need Ray: pip install 'atomopt[ray]'") from err
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(_relax_shard).options(
        num_returns="streaming", num_cpus=threads_per_worker, num_gpus=gpus_per_worker
    )
    streams = [
        task.remote(model, optimizer, options, shard, threads_per_worker)
        for shard in balanced_shards(list(items), workers)
        if shard
    ]
    results: queue.Queue = queue.Queue()
    finished = object()

    def drain(stream) -> None:
        try:
            for ref in stream:
                results.put(ray.get(ref))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            results.put(err)
        finally:
            results.put(finished)

    threads = [threading.Thread(target=drain, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    while remaining:
        item = results.get()
        if item is finished:
            remaining -= 1
        elif isinstance(item, BaseException):
            for stream in streams:
                try:
                    ray.cancel(stream)
                except Exception:  # noqa: BLE001 - best effort: the error below is what matters
                    pass
            raise item
        else:
            yield item

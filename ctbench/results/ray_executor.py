"""``ctbench compare --executor ray``: grid cells as Ray tasks, on this machine or a cluster.

Ray (not a home-made scheduler) places the cells: one GPU per cell where the cluster has
GPUs, ``cpus_per_cell`` CPUs otherwise. Each task runs an ordinary resumable run into the
same cell folder the local executor uses, so a grid can be started on one executor and
finished on the other, and a cell that finished is never dispatched again.

On an existing cluster (``--address``), every node must have ctbench installed and see the
``--out`` folder at the same path (a shared filesystem): a cell's result is read back from
disk, not shipped through Ray's object store, because its checkpoints and samples are files.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ctbench.errors import UserError
from ctbench.results.grid import Cell
from ctbench.runs.config import RunConfig
from ctbench.runs.run import RunObserver, SilentObserver


def _run_cell(config: dict[str, Any], folder: str, run_id: str, threads: int | None) -> str:
    """The Ray task body: one cell, start to finish (or resumed), in a worker process."""
    import torch

    from ctbench.runs.run import Run

    if threads is not None:
        # Ray exports OMP_NUM_THREADS for the task's CPUs; torch's intra-op pool must match,
        # or every cell on a node would spin up one thread per core and fight the others.
        torch.set_num_threads(threads)
    run = Run.create(RunConfig(**config), Path(folder), SilentObserver(), run_id=run_id)
    run.execute()
    return str(run.dir)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray: pip install 'ctbench[ray]'", where="--executor"
        ) from None
    return ray


def run_cells_on_ray(
    cells: list[Cell],
    folder: Path,
    *,
    observer: RunObserver,
    address: str | None = None,
    cpus_per_cell: int | None = None,
) -> None:
    """Dispatch every unfinished cell as a Ray task and wait for all of them.

    A cell that fails with a user-facing error (a strategy that raises, an impossible
    request) does not stop the others; the failures are reported together at the end."""
    ray = _import_ray()
    if cpus_per_cell is not None and cpus_per_cell < 1:
        raise UserError(f"expected at least 1, got {cpus_per_cell}", where="--cpus-per-cell")
    pending = [cell for cell in cells if not (folder / cell.run_id / "result.json").exists()]
    for cell in cells:
        if cell not in pending:
            observer.note(f"cell {cell.strategy} seed {cell.seed}: already finished")
    if not pending:
        return
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address is None:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"could not start or reach Ray: {exc}", where="--address") from exc
    try:
        _dispatch(ray, pending, folder, observer, cpus_per_cell)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(
    ray: Any, cells: list[Cell], folder: Path, observer: RunObserver, cpus_per_cell: int | None
) -> None:
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = gpus >= 1 and all(not c.config.device.startswith("cpu") for c in cells)
    cpus = cpus_per_cell or 1
    options: dict[str, Any] = {"num_cpus": cpus, "max_retries": 0}
    if use_gpu:
        options["num_gpus"] = 1
    task = ray.remote(_run_cell).options(**options)
    observer.note(
        f"ray: {len(cells)} cells, each on "
        + (f"1 GPU of {gpus:.0f}" if use_gpu else f"{cpus} CPU(s)")
        + f" (cluster: {ray.cluster_resources().get('CPU', 0):.0f} CPUs)"
    )
    refs = {
        task.remote(asdict(cell.config), str(folder), cell.run_id, None if use_gpu else cpus): cell
        for cell in cells
    }
    failures: list[str] = []
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            cell = refs.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                if not isinstance(cause, UserError):
                    raise cause from exc
                failures.append(f"{cell.strategy} seed {cell.seed}: {cause}")
                continue
            if not (folder / cell.run_id / "result.json").exists():
                raise UserError(
                    f"cell {cell.run_id} finished on a Ray worker but its result is not "
                    "visible here: --out must be on a filesystem every Ray node shares",
                    where=str(folder),
                )
            observer.note(f"cell {cell.strategy} seed {cell.seed}: done ({len(refs)} left)")
    if failures:
        raise UserError("; ".join(failures), where="ray cells")

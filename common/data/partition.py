"""Split one labelled data set into simulated sites with flwr-datasets partitioners."""

from __future__ import annotations

import warnings

import numpy as np

from common.errors import ConfigError

PARTITIONS = ("iid", "dirichlet")


def partition_indices(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_rows: int | None = None,
) -> list[np.ndarray]:
    """Row indices of each of `num_sites` partitions of a data set with `labels`.

    `iid` deals rows uniformly at random; `dirichlet` draws each site's label mix from
    Dirichlet(`alpha`) (smaller alpha, more skew), as flwr-datasets' `DirichletPartitioner`, with at
    least `min_rows` rows per site (default: 20, less for small tables); the partitioner raises
    ValueError when its draws cannot meet that.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_sites < 1:
        raise ConfigError(f"number of sites must be >= 1, got {num_sites}")
    if num_sites > len(labels):
        raise ConfigError(f"cannot split {len(labels)} rows into {num_sites} sites")
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_sites)
        data = Dataset.from_dict({"row": np.arange(len(labels))})
        # IidPartitioner takes contiguous shards: shuffle first so sites are random, seeded.
        data = data.shuffle(seed=seed)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"dirichlet-alpha must be > 0, got {alpha}")
        min_size = min_rows or max(2, min(20, len(labels) // (2 * num_sites)))
        partitioner = DirichletPartitioner(
            num_partitions=num_sites,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=True,
            seed=seed,
        )
        data = Dataset.from_dict({"row": np.arange(len(labels)), "label": labels.tolist()})
    else:
        raise ConfigError(f"unknown partition {scheme!r}; expected one of {', '.join(PARTITIONS)}")
    partitioner.dataset = data
    with warnings.catch_warnings():  # the partitioner warns on every Dirichlet redraw
        warnings.simplefilter("ignore", UserWarning)
        return [np.sort(np.asarray(partitioner.load_partition(i)["row"])) for i in range(num_sites)]

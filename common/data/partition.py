"""Split one labelled data set into simulated sites with flwr-datasets partitioners.

Schemes: `iid` (uniform at random), `dirichlet` (label skew, Dirichlet(alpha) class mix per site),
`quantity` (quantity skew: site i gets a share of the rows growing with i, linearly, squared or
exponentially), `pathological` (each site holds only `classes_per_site` classes) and `natural` (one site
per distinct value of a column such as a hospital id), all drawn without replacement; and, for scale
tests only, `resample` (each site draws its own rows from the whole table: rows repeat across sites,
so the sites are not disjoint and their figures are no measure of utility).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np

from fedward.common.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "quantity", "pathological", "natural", "resample")
RESAMPLE_ROWS_PER_SITE = 40  # rows each `resample` site draws unless told otherwise
QUANTITY_SIZES = ("linear", "square", "exponential")


def partition_indices(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_rows: int | None = None,
    classes_per_site: int = 1,
    sizes: str = "linear",
    groups: Sequence[str] | None = None,
    rows_per_site: int = RESAMPLE_ROWS_PER_SITE,
) -> list[np.ndarray]:
    """Row indices (sorted) of each of `num_sites` partitions of a data set with `labels`.

    - `iid` deals rows uniformly at random.
    - `dirichlet` draws each site's label mix from Dirichlet(`alpha`) (smaller alpha, more skew), as
      flwr-datasets' `DirichletPartitioner`, with at least `min_rows` rows per site (default: 20, less
      for small tables); PartitionImpossible (a ConfigError and a ValueError) when the partitioner's
      draws cannot meet that, saying what would work.
    - `quantity` gives site i (1-based) a share of the shuffled rows proportional to i, i² or eⁱ
      (`sizes` = linear, square, exponential; flwr-datasets' Linear/Square/ExponentialPartitioner);
      every site needs at least 2 rows.
    - `pathological` gives each site exactly `classes_per_site` classes (flwr-datasets'
      `PathologicalPartitioner`, first class of site i = class i mod k, the others drawn at random);
      a class held by several sites is shared out evenly. With fewer sites than classes some classes
      are held by no site and their rows are left out.
    - `natural` makes one site per distinct value of `groups` (one value per row, e.g. a hospital
      id), in sorted order of the values as strings (`natural_ids`); `num_sites` must equal their
      number (`NaturalIdPartitioner`).

    - `resample` (synthetic, for scale tests): `resample_indices`, any number of sites.

    All but `natural` are seeded by `seed`.
    """
    from datasets import Dataset

    if num_sites < 1:
        raise ConfigError(f"number of sites must be >= 1, got {num_sites}")
    if scheme == "resample":
        return resample_indices(labels, num_sites, rows_per_site, seed=seed)
    if num_sites > len(labels):
        raise ConfigError(f"cannot split {len(labels)} rows into {num_sites} sites")
    min_rows = min_rows or max(2, min(20, len(labels) // (2 * num_sites)))
    rows = np.arange(len(labels))
    if scheme == "iid":
        partitioner = _iid(num_sites)
        # IidPartitioner takes contiguous shards: shuffle first so sites are random, seeded.
        data = Dataset.from_dict({"row": rows}).shuffle(seed=seed)
    elif scheme == "dirichlet":
        partitioner = _dirichlet(num_sites, alpha, min_rows, seed)
        data = Dataset.from_dict({"row": rows, "label": labels.tolist()})
    elif scheme == "quantity":
        partitioner = _quantity(num_sites, sizes)
        data = Dataset.from_dict({"row": rows}).shuffle(seed=seed)
    elif scheme == "pathological":
        partitioner = _pathological(num_sites, classes_per_site, len(np.unique(labels)), seed)
        # the partitioner deals each class out in file order: shuffle so each site's share is random
        data = Dataset.from_dict({"row": rows, "label": labels.tolist()}).shuffle(seed=seed)
    elif scheme == "natural":
        partitioner, data = _natural(num_sites, groups, len(labels))
    else:
        raise ConfigError(f"unknown partition {scheme!r}; expected one of {', '.join(PARTITIONS)}")
    partitioner.dataset = data
    try:
        # the Dirichlet partitioner warns on every redraw; the natural one draws a progress bar
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))
                for i in range(num_sites)
            ]
    except ValueError as exc:
        if scheme == "dirichlet":  # callers may retry other draws (simulations/label_skew.py)
            raise PartitionImpossible(labels, num_sites, alpha, min_rows, seed) from None
        raise ConfigError(f"partition {scheme!r} into {num_sites} sites is impossible here: {exc}") from exc
    if scheme == "quantity":
        small = [i for i, p in enumerate(parts) if len(p) < 2]
        if small:
            raise ConfigError(
                f"quantity skew ({sizes}) over {num_sites} sites leaves site(s) {small} with fewer than 2 of "
                f"{len(labels)} rows; use fewer sites or a flatter size curve"
            )
    return parts


def resample_indices(
    labels: np.ndarray, num_sites: int, rows_per_site: int, *, seed: int = 0
) -> list[np.ndarray]:
    """`num_sites` synthetic sites of `rows_per_site` rows each, drawn from the whole table: SYNTHETIC,
    for scale tests only (any number of sites from a small table), never for utility figures.

    Stratified: each site holds every class in the table's proportions, rounded, and at least 2 rows
    of each (so a stratified held-out split leaves each class in train and test). Within a site rows
    are distinct (its train and test splits never share a row); across sites they are drawn with
    replacement, so the same patient appears at many sites. Seeded by `seed` (a public data split).
    """
    if num_sites < 1:
        raise ConfigError(f"number of sites must be >= 1, got {num_sites}")
    classes, counts = np.unique(labels, return_counts=True)
    need = 2 * len(classes)
    if not need <= rows_per_site <= len(labels):
        raise ConfigError(
            f"rows-per-site must be between {need} (2 per class) and the {len(labels)} rows of the table, "
            f"got {rows_per_site}"
        )
    shares = _stratified_counts(counts, rows_per_site)
    small = [str(c) for c, n, have in zip(classes, shares, counts, strict=True) if n > have]
    if small:
        raise ConfigError(
            f"rows-per-site {rows_per_site} asks more rows of class(es) {', '.join(small)} than the table "
            "holds; use fewer rows per site"
        )
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in classes]
    pairs = list(zip(members, shares, strict=True))
    return [
        np.sort(np.concatenate([rng.choice(rows, n, replace=False) for rows, n in pairs]))
        for _ in range(num_sites)
    ]


def _stratified_counts(counts: np.ndarray, total: int) -> list[int]:
    """Rows per class for a site of `total` rows: the table's proportions (largest remainders), at least
    2 per class, taken from the largest classes."""
    exact = counts / counts.sum() * total
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares), kind="stable")[: total - shares.sum()]:
        shares[i] += 1
    for i in np.flatnonzero(shares < 2):
        while shares[i] < 2:
            shares[int(np.argmax(shares))] -= 1
            shares[i] += 1
    return [int(n) for n in shares]


class PartitionImpossible(ConfigError, ValueError):
    """No Dirichlet partition could be drawn. The message says what would work; it is worked out
    (a few more draws, seconds) only when shown, not when a caller catches it to try another seed."""

    def __init__(self, labels: np.ndarray, num_sites: int, alpha: float, min_rows: int, seed: int) -> None:
        super().__init__(f"no Dirichlet(alpha {alpha:g}) partition into {num_sites} sites")
        self._args = (labels, num_sites, alpha, min_rows, seed)
        self._message: str | None = None

    def __reduce__(self):  # pickled (e.g. by Ray) with the arguments it was made from
        return (type(self), self._args)

    def __str__(self) -> str:
        if self._message is None:
            self._message = _dirichlet_advice(*self._args)
        return self._message


def _draws(labels: np.ndarray, num_sites: int, alpha: float, min_rows: int, seed: int) -> bool:
    """Whether flwr-datasets' Dirichlet partitioner finds a partition with these settings."""
    from datasets import Dataset

    partitioner = _dirichlet(num_sites, alpha, min_rows, seed)
    partitioner.dataset = Dataset.from_dict({"row": np.arange(len(labels)), "label": labels.tolist()})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            partitioner.load_partition(0)
    except ValueError:
        return False
    return True


def _dirichlet_advice(labels: np.ndarray, num_sites: int, alpha: float, min_rows: int, seed: int) -> str:
    """One line: the Dirichlet draw that failed, and settings (same seed) that do give a partition."""
    options = []
    fewer = next((n for n in range(num_sites - 1, 1, -1) if _draws(labels, n, alpha, min_rows, seed)), None)
    if fewer is not None:
        options.append(f"{fewer} sites")
    larger = next(
        (a for a in (alpha * 2, alpha * 4, alpha * 10) if _draws(labels, num_sites, a, min_rows, seed)), None
    )
    if larger is not None:
        options.append(f"alpha {larger:g}")
    smaller = next(
        (m for m in (min_rows // 2, 2) if m < min_rows and _draws(labels, num_sites, alpha, m, seed)), None
    )
    if smaller is not None:
        options.append(f"a minimum of {smaller} rows per site (scenario key min-rows)")
    works = f"; with this seed these work: {', '.join(options)}" if options else ""
    return (
        f"no Dirichlet(alpha {alpha:g}) partition of {len(labels)} rows into {num_sites} sites gives "
        f"every site at least {min_rows} rows (flwr-datasets gave up after 10 draws): use fewer sites, a "
        f"larger alpha, a smaller minimum per site or another seed{works}"
    )


def natural_ids(groups: Sequence[object]) -> list[str]:
    """The natural ids of a `natural` partition, in site order (site i holds value i of this list)."""
    return sorted({str(g) for g in groups})


def _iid(num_sites: int):
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_sites)


def _dirichlet(num_sites: int, alpha: float, min_size: int, seed: int):
    from flwr_datasets.partitioner import DirichletPartitioner

    if alpha <= 0:
        raise ConfigError(f"dirichlet-alpha must be > 0, got {alpha}")
    return DirichletPartitioner(
        num_partitions=num_sites,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=True,
        seed=seed,
    )


def _quantity(num_sites: int, sizes: str):
    from flwr_datasets.partitioner import ExponentialPartitioner, LinearPartitioner, SquarePartitioner

    kinds = {"linear": LinearPartitioner, "square": SquarePartitioner, "exponential": ExponentialPartitioner}
    if sizes not in kinds:
        raise ConfigError(f"quantity sizes must be one of {', '.join(QUANTITY_SIZES)}, got {sizes!r}")
    return kinds[sizes](num_partitions=num_sites)


def _pathological(num_sites: int, classes_per_site: int, num_classes: int, seed: int):
    from flwr_datasets.partitioner import PathologicalPartitioner

    if not 1 <= classes_per_site <= num_classes:
        raise ConfigError(
            f"classes-per-site must be between 1 and the {num_classes} classes of the data, "
            f"got {classes_per_site}"
        )
    return PathologicalPartitioner(
        num_partitions=num_sites,
        partition_by="label",
        num_classes_per_partition=classes_per_site,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )


def _natural(num_sites: int, groups: Sequence[object] | None, num_rows: int):
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    if groups is None or len(groups) != num_rows:
        raise ConfigError("a natural partition needs one group value (e.g. a hospital id) per row")
    found = natural_ids(groups)
    if len(found) != num_sites:
        raise ConfigError(
            f"the natural partition has {len(found)} groups ({', '.join(found[:10])}), not {num_sites} sites"
        )
    data = Dataset.from_dict({"row": np.arange(num_rows), "group": [str(g) for g in groups]})
    return NaturalIdPartitioner(partition_by="group"), data

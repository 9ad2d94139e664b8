"""Chronic kidney disease from routine lab values (UCI CKD schema)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from fedward.common.config import RunConfig
from fedward.common.data.ckd import CkdTable, find_site_csv, load_ckd_csv
from fedward.common.data.ckd_mapping import find_site_mapping, load_mapping
from fedward.common.data.ckd_reference import CKD_REFERENCE
from fedward.common.data.ckd_schema import NUM_FEATURES
from fedward.common.data.partition import partition_indices
from fedward.common.data.patient_keys import ckd_row_keys
from fedward.common.data.split import stratified_split
from fedward.common.datasets import ckd_csv_path
from fedward.common.metrics import binary_metrics, pool_binary
from fedward.common.models import build_tabular_model
from fedward.common.stats import Standardiser
from fedward.common.tasks.base import SiteData, SiteSource, Task
from fedward.common.training import predict_proba


class CkdTask(Task):
    """Binary CKD / not CKD from 24 lab and clinical features."""

    name = "ckd"
    grad_sample_mode = "ew"  # PyTorch's expanded weights: a private step of the small MLP 0.8x the hooks'
    statistics_noise_multiplier = 6.0  # its sums impute and scale every site's inputs (common/stats.py)
    statistics_bound = CKD_REFERENCE.bound

    def load_site(self, source: SiteSource, config: RunConfig) -> SiteData:
        """Validated rows of the site, split stratified by label (each row is one patient).

        A `ckd-mapping.toml` in the site's data folder says how its CSV differs from the schema; what
        harmonisation did goes into `details` (stays at the site) and counts into `report`.
        """
        if source.data_dir is not None:
            first, second = find_site_csv(source.data_dir)
            mapping_file = find_site_mapping(source.data_dir)
            mapping = load_mapping(mapping_file) if mapping_file is not None else None
            train = load_ckd_csv(first, strict=False, mapping=mapping)
            if second is not None:
                test = load_ckd_csv(second, strict=False, mapping=mapping)
                tables = [train, test]
            else:
                tables = [train]
                train, test = self._split(train, config)
        else:
            table = load_ckd_csv(ckd_csv_path(), strict=False)
            parts = partition_indices(
                table.y,
                source.num_partitions,
                config.partition,
                alpha=config.dirichlet_alpha,
                seed=config.seed,
            )
            mine = table.subset(parts[source.partition_index])
            own_rows = set(mine.source_rows.tolist())
            mine.issues = [i for i in table.issues if i.row in own_rows]
            tables = [mine]
            train, test = self._split(mine, config)
        issues = [i for t in tables for i in t.issues]
        dropped = sum(len(t.dropped_rows) for t in tables)
        dropped_at = {(t.file, r) for t in tables for r in t.dropped_rows}
        report = {
            "rows-read": float(len(train) + len(test) + dropped),
            "rows-dropped": float(dropped),
            "cells-blanked": float(sum((i.file, i.row) not in dropped_at for i in issues)),
            "columns-harmonised": float(len({c for t in tables for c in t.harmonised_columns})),
            "values-converted": float(sum(t.values_converted for t in tables)),
        }
        # The mapping file is not among `files`: it changes how the data is read, not which patients
        # it holds, so editing it must not make a new data set with a fresh privacy budget.
        files = sorted({Path(t.file) for t in tables})
        details = [line for t in tables for line in t.harmonisation] + [str(i) for i in issues]
        keys = ckd_row_keys(train.x, train.y) + ckd_row_keys(test.x, test.y)
        return SiteData(source.site_id, train, test, len(train), len(test), report, details, files, keys)

    @staticmethod
    def _split(table: CkdTable, config: RunConfig) -> tuple[CkdTable, CkdTable]:
        train_idx, test_idx = stratified_split(table.source_rows, table.y, config.test_fraction, config.seed)
        return table.subset(train_idx), table.subset(test_idx)

    def statistics(self, site: SiteData) -> tuple[np.ndarray, float]:
        """Each training patient's bounded vector of counts, values and squares against the public
        clinical reference (common/stats.py), and the vectors' L2 bound."""
        return CKD_REFERENCE.contributions(site.train.x), self.statistics_bound

    def combine_statistics(
        self, per_site: list[np.ndarray], noise_std: float = 0.0
    ) -> dict[str, list[float]]:
        """Federated imputation means and scaling deviations."""
        return Standardiser.combine(per_site, CKD_REFERENCE, noise_std).to_config()

    def datasets(self, site: SiteData, shared: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Standardised tensors; missing values take the federated mean."""
        scaler = Standardiser.from_config(shared)

        def tensors(table: CkdTable) -> TensorDataset:
            return TensorDataset(torch.from_numpy(scaler.apply(table.x)), torch.from_numpy(table.y))

        return tensors(site.train), tensors(site.test)

    def build_model(self, config: RunConfig) -> nn.Module:
        """Logistic regression (default) or a small MLP over the 24 features."""
        return build_tabular_model(config.model, NUM_FEATURES, 2)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the two classes."""
        return F.cross_entropy(output, target)

    def evaluate(
        self, model: nn.Module, test: Dataset, device: torch.device, *, intervals: bool = False
    ) -> dict[str, float]:
        """Binary metrics and confusion counts on the held-out rows."""
        if len(test) == 0:  # a tiny site keeps every patient for training: nothing to score
            return {"num-examples": 0.0}
        probs, labels = predict_proba(model, test, device)
        out = binary_metrics(labels, probs[:, 1], intervals=intervals)
        out["num-examples"] = float(len(labels))
        return {k: float(v) for k, v in out.items()}

    def pool(self, per_site: list[dict[str, float]]) -> dict[str, float]:
        """Exact pooled threshold metrics; example-weighted AUC and loss."""
        return pool_binary(per_site)  # skips empty splits, counts suppressed sites

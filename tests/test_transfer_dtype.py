"""Half-precision transfer (`transfer-dtype`): sites send float16/bfloat16 train replies, the server
aggregates float32; integer buffers travel as they are."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from inprocess_grid import InProcessGrid, ckd_run_config, run_server

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.transfer import BFLOAT16_STYPE, TRANSFER_DTYPES, decode, encode
from fedward.simulations.prepare import prepare_ckd_sites

RNG = np.random.default_rng(0)  # test data only
WEIGHTS = {
    "fc.weight": RNG.normal(size=(32, 24)).astype(np.float32),
    "fc.bias": RNG.normal(size=32).astype(np.float32) * 1e-3,
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


def _record() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in WEIGHTS.items()})


def _over_the_wire(record: ArrayRecord) -> ArrayRecord:
    message = Message(RecordDict({"arrays": record}), dst_node_id=2, message_type="train")
    return message_from_proto(message_to_proto(message)).content["arrays"]


def test_the_config_offers_the_dtypes_the_cast_knows() -> None:
    field = RunConfig.model_fields["transfer_dtype"]
    assert typing.get_args(field.annotation) == TRANSFER_DTYPES and field.default == "float32"
    with pytest.raises(ConfigError, match="transfer-dtype"):
        RunConfig.from_flower({"transfer-dtype": "int8"})
    with pytest.raises(ConfigError, match="transfer-dtype"):
        encode(_record(), "float8")


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(("dtype", "rel"), [("float16", 2**-11), ("bfloat16", 2**-8)])
def test_cast_round_trip_through_flowers_serialisation(dtype: str, rel: float) -> None:
    sent = _over_the_wire(encode(_record(), dtype))

    assert sent["fc.weight"].dtype == dtype and sent["fc.bias"].dtype == dtype
    assert sent["bn.num_batches_tracked"].numpy().dtype == np.int64  # integer buffers untouched
    assert len(sent["fc.weight"].data) < 0.6 * len(_record()["fc.weight"].data)  # half the bytes
    back = {k: a.numpy() for k, a in decode(sent, dtype).items()}
    assert back.keys() == WEIGHTS.keys()
    for key, original in WEIGHTS.items():
        assert back[key].dtype == original.dtype and back[key].shape == original.shape
        np.testing.assert_allclose(back[key], original, rtol=rel, atol=0)
    assert back["bn.num_batches_tracked"] == 7


@pytest.mark.usefixtures("flower_identity")
def test_bfloat16_decodes_to_torchs_own_values_and_is_never_read_as_numpy() -> None:
    sent = _over_the_wire(encode(_record(), "bfloat16"))
    expected = torch.from_numpy(WEIGHTS["fc.weight"]).to(torch.bfloat16).float().numpy()

    assert sent["fc.weight"].stype == BFLOAT16_STYPE
    with pytest.raises(TypeError):
        sent["fc.weight"].numpy()
    np.testing.assert_array_equal(decode(sent, "bfloat16")["fc.weight"].numpy(), expected)
    assert decode(sent, "float16")["fc.weight"].dtype == "bfloat16"  # only the configured dtype is read


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(("dtype", "strategy"), [("float16", "fedavg"), ("bfloat16", "scaffold")])
def test_a_federation_sends_half_precision_and_aggregates_float32(
    dtype: str, strategy: str, tmp_path: Path
) -> None:
    prepare_ckd_sites(tmp_path / "sites", 3, "iid")
    config = ckd_run_config(
        tmp_path / "sites",
        tmp_path / "runs",
        **{"transfer-dtype": dtype, "strategy": strategy, "num-server-rounds": 2, "run-name": "r"},
    )
    grid = InProcessGrid(config, 3)

    run_server(grid, config)

    trained = [r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error()]
    assert len(trained) == 6
    for reply in trained:
        for record in reply.content.array_records.values():  # the model and SCAFFOLD's Δc_i
            assert {a.dtype for a in record.values()} == {dtype}
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds-completed"] == 2 and summary["stopped"] is None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(not row.get("rejected") for row in rows), rows  # the server read every update
    model = torch.load(run / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in model.values())

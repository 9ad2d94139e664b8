"""Secure aggregation (SecAgg+ on the Message API) in real federations: fedward's ServerApp main and a
real ClientApp per site, every message serialised as on the wire (tests/support/inprocess_grid.py).

What the ServerApp receives from a site is never its update (a masked vector, uniform in Z_2^32); the
aggregate equals plain FedAvg's up to quantisation; a site dropping out at the masked-vector stage is
survived; too many dropouts stop the run with a clear error and nothing signed; combinations that need
individual updates are refused, naming the key. The protocol's own messages stay small (raw keys, short
secrets, no round config outside the training stage), and a site refuses a key list that is not this
round's or lacks its own keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import message_to_proto
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from safetensors.numpy import load_file
from scipy import stats
from site_policy import policy_text
from test_no_patient_data_leaves import _check_listed, _listed_fields

from fedward.client.app import site_app
from fedward.client.hostile import hostile_mod
from fedward.client.simulated_faults import fault_mod
from fedward.common.algorithms.scaffold import SCAFFOLD_CONTROL_DELTA
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.secure_aggregation import (
    COLLECT,
    KEY_BYTES,
    MASKED_KEY,
    MASKED_RECORD,
    MODULUS,
    RECORD,
    SECRET_BYTES,
    SETUP,
    SHARE_BYTES,
    SHARE_KEYS,
    UNMASK,
    Key,
    SecureAggregationError,
    combine_secret,
    decrypt_shares,
    encrypt_shares,
    generate_key_pair,
    new_secret,
    pairwise_seed,
    share_secret,
)
from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SECURE = {"secure-aggregation": True}


def _config(tmp_path: Path, sites: int, name: str, **overrides: Any) -> dict[str, Any]:
    data = tmp_path / "sites"
    if not data.exists():
        prepare_ckd_sites(data, sites, "iid")
    settings = {"num-server-rounds": 1, "min-sites": sites, "dp": False, "run-name": name, **overrides}
    return ckd_run_config(data, tmp_path / "runs", **settings)


def _run(config: dict[str, Any], sites: int, app=None) -> InProcessGrid:
    grid = InProcessGrid(config, sites, app=app)
    run_server(grid, config)
    return grid


def _model(tmp_path: Path, name: str) -> dict[str, np.ndarray]:
    return load_file(tmp_path / "runs" / name / "model.safetensors")


def _tolerance(config: dict[str, Any], sites: int) -> float:
    """Quantisation error bound of the mean: each site's stochastic rounding errs by less than one step
    2R/2^bits, and the sum is divided by Σ w_i / W ≥ sites / 2 here (iid sites, each near the weight unit
    W = the largest count a site may claim)."""
    parsed = RunConfig.from_flower(config)
    step = 2 * parsed.secure_aggregation_clipping_range / 2**parsed.secure_aggregation_bits
    return 2 * step


def _masked(grid: InProcessGrid) -> dict[int, np.ndarray]:
    """What the ServerApp received at the masked-vector stage, by site."""
    out = {}
    for reply in grid.replies:
        record = reply.content.config_records.get(RECORD) if not reply.has_error() else None
        if record is not None and record[Key.STAGE] == COLLECT:
            out[reply.metadata.src_node_id] = reply.content[MASKED_RECORD][MASKED_KEY].numpy()
    return out


def _drop_at_training(node: int):
    """A test-local mod: site `node` dies instead of training (in a secure round: at the masked-vector
    stage, after it has shared its keys)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(RECORD)
        training = record is None or record[Key.STAGE] == COLLECT
        if msg.metadata.message_type == MessageType.TRAIN and msg.metadata.dst_node_id == node and training:
            return Message(Error(code=4080, reason=f"node {node} killed mid-round"), reply_to=msg)
        return call_next(msg, context)

    return mod


def test_the_server_sees_masked_vectors_and_the_aggregate_equals_fedavg(tmp_path: Path) -> None:
    sites = 3
    plain_config = _config(tmp_path, sites, "plain")
    secure_config = _config(tmp_path, sites, "secure", **SECURE)
    plain = _run(plain_config, sites)
    secure = _run(secure_config, sites)

    # what the ServerApp received: no site's arrays anywhere, only masked vectors at the collect stage
    train = [r for r in secure.replies if r.metadata.message_type == "train"]
    assert train and not any(r.has_error() for r in train)
    assert all(not r.content.array_records or set(r.content.array_records) == {MASKED_RECORD} for r in train)
    masked = _masked(secure)
    assert len(masked) == sites
    local = {  # each site's true update, from the plain run (training without DP is deterministic)
        r.metadata.src_node_id: r.content["arrays"]
        for r in plain.replies
        if r.metadata.message_type == "train"
    }
    start = next(m for m in plain.sent if m.metadata.message_type == "train").content["arrays"]
    for node, vector in masked.items():
        assert vector.dtype == np.uint32
        uniform = vector.astype(np.float64) / MODULUS
        assert stats.kstest(uniform, "uniform").pvalue > 1e-4  # uniform-looking in the ring
        update = np.concatenate([(local[node][k].numpy() - start[k].numpy()).ravel() for k in start])
        assert abs(np.corrcoef(uniform[: update.size], update)[0, 1]) < 0.1  # nothing of the update

    # the aggregate equals plain FedAvg's global model up to quantisation
    want, got = _model(tmp_path, "plain"), _model(tmp_path, "secure")
    assert want.keys() == got.keys()
    tolerance = _tolerance(secure_config, sites)
    for key in want:
        assert np.allclose(got[key], want[key], rtol=0, atol=tolerance), key
    moved = max(float(np.abs(want[k] - start[k].numpy()).max()) for k in want)
    assert moved > 100 * tolerance  # the round did move the model: the comparison means something


def test_a_server_optimiser_with_a_float64_global_still_gets_float32_updates(tmp_path: Path) -> None:
    """FedAdam's global arrays come back float64; the secure aggregate must still be in the dtypes the
    sites trained in (the layout's), or every later round's aggregate fails the update check (found by
    the tumour distributed-DP benchmark: all updates rejected from round 2 on)."""
    sites = 3
    overrides = {"strategy": "fedadam", "num-server-rounds": 3, "dp": True, "distributed-dp": True,
                 "dp-accountant": "rdp", "lr": 1.0}  # fmt: skip
    _run(_config(tmp_path, sites, "secure", **overrides, **SECURE), sites)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "secure" / "metrics.jsonl").open()]
    assert [r["failures"] for r in rows if "round" in r] == [[]] * 3
    assert {str(v.dtype) for v in _model(tmp_path, "secure").values()} == {"float32"}


def test_scaffold_control_variates_travel_masked_and_aggregate_as_plain_scaffold(tmp_path: Path) -> None:
    sites, overrides = 3, {"strategy": "scaffold", "num-server-rounds": 2}  # round 2 uses the variate
    _run(_config(tmp_path, sites, "plain", **overrides), sites)
    secure_config = _config(tmp_path, sites, "secure", **overrides, **SECURE)
    secure = _run(secure_config, sites)
    layouts = [r.content[RECORD][Key.LAYOUT] for r in secure.replies if r.content.get(MASKED_RECORD)]
    assert len(layouts) == 2 * sites and all(SCAFFOLD_CONTROL_DELTA in text for text in layouts)
    want, got = _model(tmp_path, "plain"), _model(tmp_path, "secure")
    tolerance = 10 * _tolerance(secure_config, sites)  # round 2 trains from models within tolerance
    for key in want:
        assert np.allclose(got[key], want[key], rtol=0, atol=tolerance), key


def test_with_dp_the_run_completes_and_sends_only_masked_vectors(tmp_path: Path) -> None:
    sites = 3
    config = _config(tmp_path, sites, "secure-dp", dp=True, **SECURE)
    grid = _run(config, sites)
    train = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert not any(r.has_error() for r in train)
    assert all("arrays" not in r.content for r in train)
    listed = _listed_fields()
    for reply in grid.replies:  # every field the protocol sends is in docs/privacy.md's table
        _check_listed(reply, listed)
    masked = _masked(grid)
    assert len(masked) == sites
    for vector in masked.values():
        assert stats.kstest(vector.astype(np.float64) / MODULUS, "uniform").pvalue > 1e-4
    metrics = [r.content["metrics"] for r in train if "metrics" in r.content]
    assert len(metrics) == sites and all(0 < m["epsilon"] < np.inf for m in metrics)  # plaintext, public
    assert (tmp_path / "runs" / "secure-dp" / "provenance.json").is_file()

    # a coordinator that promised secure aggregation and sends a plain train message is refused
    collect = next(m for m in grid.sent if RECORD in m.content and m.content[RECORD][Key.STAGE] == COLLECT)
    del collect.content[RECORD]
    (reply,) = grid.send_and_receive([collect])
    assert reply.has_error() and "plain train message" in reply.error.reason


def test_a_site_refuses_a_round_with_fewer_sites_than_its_policy_allows(tmp_path: Path) -> None:
    sites = 3
    config = _config(tmp_path, sites, "secure-policy", dp=True, **SECURE)
    (tmp_path / "sites" / "site-0" / "policy.toml").write_text(policy_text(secure_aggregation_min_sites=4))
    grid = _run(config, sites)
    refusals = [r for r in grid.replies if r.has_error() and r.metadata.src_node_id == 101]
    assert refusals and "3 site(s) in the round, fewer than the 4 this site" in refusals[0].error.reason
    assert set(_masked(grid)) == {102, 103}  # the others (2 = the threshold of 3) go on without it


def test_a_site_dying_at_the_masked_vector_stage_leaves_the_mean_of_the_others(tmp_path: Path) -> None:
    sites, victim = 4, 102
    overrides = {"min-sites": 2}
    plain_config = _config(tmp_path, sites, "plain", **overrides)
    secure_config = _config(tmp_path, sites, "secure", **overrides, **SECURE)
    app = site_app(_drop_at_training(victim), fault_mod, hostile_mod)
    _run(plain_config, sites, app)
    secure = _run(secure_config, sites, app)

    assert any(r.has_error() and r.metadata.src_node_id == victim for r in secure.replies)
    assert set(_masked(secure)) == {101, 103, 104}  # the victim had shared its keys, then died
    shared = {r.metadata.src_node_id for r in secure.replies if not r.has_error() and RECORD in r.content
              and r.content[RECORD][Key.STAGE] == "share-keys"}  # fmt: skip
    assert victim in shared
    want, got = _model(tmp_path, "plain"), _model(tmp_path, "secure")  # plain: FedAvg of the 3 others
    tolerance = _tolerance(secure_config, sites)
    for key in want:
        assert np.allclose(got[key], want[key], rtol=0, atol=tolerance), key
    _run(_config(tmp_path, sites, "all", **overrides), sites)  # with the victim the mean is another
    everyone = _model(tmp_path, "all")
    assert max(float(np.abs(everyone[k] - want[k]).max()) for k in want) > 100 * tolerance


def test_more_dropouts_than_the_threshold_allows_stop_the_run_unsigned(tmp_path: Path) -> None:
    sites = 4  # threshold 0.66 of 4: 3 sites must send their masked vectors
    config = _config(tmp_path, sites, "secure", **{"min-sites": 2}, **SECURE)
    first, second = _drop_at_training(101), _drop_at_training(102)
    app = site_app(first, second, fault_mod, hostile_mod)
    with pytest.raises(SecureAggregationError, match=r"only 2 of the 4 sampled sites .* fewer than the 3"):
        _run(config, sites, app)
    run = tmp_path / "runs" / "secure"
    assert not (run / "provenance.json").exists() and not list(run.glob("checkpoint*"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"strategy": "krum"}, "strategy"),
        ({"central-dp": True}, "central-dp"),
        ({"max-update-norm": 5.0}, "max-update-norm"),
    ],
)
def test_combinations_that_need_individual_updates_are_refused(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"secure-aggregation with {key}"):
        RunConfig.from_flower({**SECURE, **overrides})
    RunConfig.from_flower(overrides)  # fine without secure aggregation


def test_protocol_messages_are_small_and_only_the_training_stage_carries_the_round_config(
    tmp_path: Path,
) -> None:
    sites = 3
    grid = _run(_config(tmp_path, sites, "secure", **SECURE), sites)
    stages = {SETUP: [], SHARE_KEYS: [], UNMASK: []}
    for message in grid.sent:
        record = message.content.config_records.get(RECORD)
        if record is not None and record[Key.STAGE] in stages:
            assert set(message.content.keys()) == {RECORD}  # no round config, no model
            stages[record[Key.STAGE]].append(message_to_proto(message).ByteSize())
        elif record is not None:
            assert "config" in message.content and "arrays" in message.content  # the training stage
    assert all(len(sizes) == sites for sizes in stages.values())
    for reply in grid.replies:
        record = reply.content.config_records.get(RECORD) if not reply.has_error() else None
        if record is None:
            continue
        if record[Key.STAGE] == SETUP:
            assert len(record[Key.PUBLIC_KEY_1]) == len(record[Key.PUBLIC_KEY_2]) == KEY_BYTES
        if record[Key.STAGE] == SHARE_KEYS:  # nonce + two 20-byte shares (one Shamir polynomial each) + tag
            assert all(len(c) == 12 + 2 * SHARE_BYTES + 16 for c in record[Key.CIPHERTEXTS])
        if record[Key.STAGE] == UNMASK:
            assert all(len(share) == SHARE_BYTES == 20 for share in record[Key.SHARES])
    # per participant: a node id and two raw keys (PEM keys were ~215 bytes each, the config ~500 bytes)
    assert max(stages[SHARE_KEYS]) <= 200 + 100 * sites
    assert max(stages[SETUP]) <= 200 and max(stages[UNMASK]) <= 200


def test_any_threshold_of_shares_rebuilds_a_secret_and_fewer_do_not() -> None:
    secret = new_secret()
    assert len(secret) == SECRET_BYTES == 16
    shares = share_secret(secret, 4, 7)
    assert len(shares) == 7 and len({s[:4] for s in shares}) == 7
    assert combine_secret(shares[3:]) == combine_secret(shares[:4]) == secret
    assert combine_secret(shares[:3]) != secret  # below the threshold: another polynomial's value
    with pytest.raises(ValueError):
        combine_secret([shares[0], shares[0], shares[1], shares[2]])  # one holder twice
    with pytest.raises(ValueError):
        combine_secret([s + b"x" for s in shares[:4]])


def _stage(node: int, stage: str, server_round: int, **fields: Any) -> Message:
    record = ConfigRecord({Key.STAGE: stage, Key.SERVER_ROUND: server_round, **fields})
    return Message(
        RecordDict({RECORD: record}), dst_node_id=node, message_type=MessageType.TRAIN, group_id="1"
    )


def _refusal(grid: InProcessGrid, message: Message) -> str:
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error(), "the site accepted it"
    return reply.error.reason


def test_a_site_refuses_a_key_list_of_another_round_forged_or_not_raw(tmp_path: Path) -> None:
    grid = InProcessGrid(_config(tmp_path, 3, "secure", **SECURE), 3)
    node, others = 101, [generate_key_pair()[1] for _ in range(4)]

    def listing(server_round: int, own: tuple[bytes, bytes] | None = None, other: bytes | None = None):
        (setup,) = grid.send_and_receive([_stage(node, SETUP, 1, **{Key.WEIGHT_UNIT: 100.0})])
        keys = own or (setup.content[RECORD][Key.PUBLIC_KEY_1], setup.content[RECORD][Key.PUBLIC_KEY_2])
        fields = {
            Key.NODES: [node, 102, 103],
            Key.PUBLIC_KEY_1: [keys[0], others[0], others[1]],
            Key.PUBLIC_KEY_2: [keys[1], other or others[2], others[3]],  # encrypts shares at once
        }
        return _stage(node, SHARE_KEYS, server_round, **fields)

    assert "a stage of another round" in _refusal(grid, listing(server_round=2))
    forged = tuple(generate_key_pair()[1] for _ in range(2))
    assert "does not hold this site's own public keys" in _refusal(grid, listing(1, own=forged))
    pem_sized = bytes(215)
    assert "expected a raw X25519 key of 32" in _refusal(grid, listing(1, other=pem_sized))
    assert "invalid public key" in _refusal(grid, listing(1, other=bytes(32)))  # a low-order point


def test_shares_decrypt_only_for_their_pair_round_and_key_list() -> None:
    (secret_a, public_a), (secret_b, public_b) = generate_key_pair(), generate_key_pair()
    binding, shares = bytes(range(32)), (b"s" * 36, b"k" * 36)
    ciphertext = encrypt_shares(secret_a, public_b, 101, 102, binding, shares)
    assert decrypt_shares(secret_b, public_a, 101, 102, binding, ciphertext) == shares
    assert pairwise_seed(secret_a, public_b) == pairwise_seed(secret_b, public_a)
    for source, destination, other_binding in [
        (101, 102, bytes(32)),
        (103, 102, binding),
        (102, 101, binding),
    ]:
        with pytest.raises(SecureAggregationError, match="do not decrypt"):
            decrypt_shares(secret_b, public_a, source, destination, other_binding, ciphertext)


def _pem_keys_at(node: int):
    """A test-local mod: site `node` answers setup with a PEM-sized public key."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        record = reply.content.config_records.get(RECORD) if not reply.has_error() else None
        if msg.metadata.dst_node_id == node and record is not None and record[Key.STAGE] == SETUP:
            record[Key.PUBLIC_KEY_1] = bytes(215)
        return reply

    return mod


def test_the_coordinator_leaves_out_a_site_whose_public_keys_are_not_raw(tmp_path: Path) -> None:
    sites, odd = 4, 104
    config = _config(tmp_path, sites, "secure", **{"min-sites": 2}, **SECURE)
    grid = _run(config, sites, site_app(_pem_keys_at(odd), fault_mod, hostile_mod))
    assert set(_masked(grid)) == {101, 102, 103}
    listing = next(m for m in grid.sent if RECORD in m.content and m.content[RECORD][Key.STAGE] == SHARE_KEYS)
    assert odd not in listing.content[RECORD][Key.NODES]

"""Secure aggregation (SecAgg+ on Flower's Message API): what the coordinator and the sites agree on.

Four stages per training round, every message a `train` message carrying the `RECORD` ConfigRecord
(`server/secure_aggregation.py` runs them, `client/secure_aggregation.py` answers them); only the
masked-vector stage also carries the round's train content (its `config` record and the global model):

1. setup: each site makes two fresh X25519 key pairs (one for masks, one for encrypting shares), each
   private key derived from a 16-byte secret, and sends the raw 32-byte public keys;
2. share keys: each site gets every participant's public keys, Shamir-shares its 16-byte self-mask seed
   and its mask key's 16-byte secret (threshold t of n; one GF(2^128) polynomial each), and sends each
   owner its two shares, AES-GCM-encrypted with the sender, owner and the masks' binding (below) as
   associated data (through the coordinator);
3. collect masked vectors: with the shares addressed to it, each site trains (the round's real train
   content) and sends its update, weighted, clipped and quantised into the ring Z_2^32, plus its
   self mask and ± one pairwise mask per other participant: uniform noise to anyone without the keys;
4. unmask: the survivors send the shares of the survivors' self-mask seeds and of the dropped sites'
   mask keys; the coordinator removes every mask and learns only the sum.

All cryptography is Flower's (`flwr.common.secure_aggregation`: quantisation), pycryptodome's (the Shamir
sharing over GF(2^128) that Flower's SecAgg+ wraps, called directly: Flower's wrapper pads a secret with
PKCS#7, so a 16-byte secret would cost two polynomials) or the `cryptography` package's (X25519 key
agreement, HKDF-SHA256, AES-GCM, AES). The one exception to Flower's own primitives is the mask
generator: Flower's `pseudo_rand_gen` folds its seed to 32 bits (numpy's RandomState), which a
coordinator can search; here each mask is the AES-256-CTR keystream of the full seed (`mask_vector`),
with the round's parameters as the nonce, so a coordinator that sends different parameters (a weight
unit, a key list) to different sites gets masks that do not cancel.

The vector (`Layout`) holds every floating-point entry of every ArrayRecord of the train reply: the
model record `arrays` as the update w_local − w_global multiplied by the site's own weight (its
`num-examples` over the run's public weight unit), every other record (SCAFFOLD's Δc) as it is with
weight 1 (SCAFFOLD averages Δc unweighted); then one exact integer, the quantised weight. Integer
entries (BatchNorm's `num_batches_tracked`, a step count the site sends as `steps` anyway) are not
aggregated: the aggregate keeps the global model's value; an integer entry outside `arrays` is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedward.common.errors import ConfigError, FedwardError

if TYPE_CHECKING:
    from fedward.common.config import RunConfig

RECORD = "secure-aggregation"  # ConfigRecord of every protocol message and reply
MASKED_RECORD = "secure-aggregation-masked"  # ArrayRecord of a masked reply: one uint32 vector
MASKED_KEY = "vector"
WEIGHTED_RECORD = "arrays"  # the model record: weighted by the site's own num-examples
WEIGHT_KEY = "num-examples"

SETUP, SHARE_KEYS, COLLECT, UNMASK = "setup", "share-keys", "collect-masked-vectors", "unmask"
STAGES = (SETUP, SHARE_KEYS, COLLECT, UNMASK)


class Key:
    """Field names of the `RECORD` ConfigRecord."""

    STAGE = "stage"
    SERVER_ROUND = "server-round"
    WEIGHT_UNIT = "weight-unit"  # setup: the run's public weight unit (a count no honest site exceeds)
    PUBLIC_KEY_1 = "public-key-1"  # setup reply: the mask key (raw X25519); share keys: every participant's
    PUBLIC_KEY_2 = "public-key-2"  # the key that encrypts shares (raw X25519)
    NODES = "nodes"  # share keys: the participants, in the order of the public keys
    DESTINATIONS = "destinations"  # share keys reply: the owner of each ciphertext
    SOURCES = "sources"  # collect: the site each forwarded ciphertext comes from
    CIPHERTEXTS = "ciphertexts"
    LAYOUT = "layout"  # collect reply: the vector's layout (JSON; keys, shapes, dtypes, no values)
    ACTIVE = "active"  # unmask: sites whose masked vector is in the sum (their seed shares wanted)
    DROPPED = "dropped"  # unmask: sites that dropped after sharing keys (their mask-key shares wanted)
    OWNERS = "owners"  # unmask reply: whose secret each share is
    SHARES = "shares"


# strategies that need only a (weighted) mean of the updates; the others need individual updates
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "scaffold")
MODULUS_BITS = 32
MODULUS = 2**MODULUS_BITS
KEY_BYTES = 32  # a raw X25519 public key
# self-mask seeds and private-key secrets: 128 bits of OS entropy, one GF(2^128) element for Shamir (X25519
# itself offers about 128 bits; each secret only seeds AES-256-CTR or, through HKDF, an X25519 key)
SECRET_BYTES = 16
SHARE_BYTES = 4 + SECRET_BYTES  # a Shamir share: the holder's index (4 bytes, little-endian) and its value
NONCE_BYTES = 12  # AES-GCM nonce of a share ciphertext


class SecureAggregationError(FedwardError):
    """A secure-aggregation round cannot complete (too few sites left, shares missing, bad replies)."""


@dataclass(frozen=True)
class SecAggParameters:
    """The protocol's parameters, from the run config (the same at the coordinator and every site)."""

    threshold: float  # share of the participants whose shares reconstruct a secret
    clipping_range: float  # every weighted coordinate is clipped to ±this before quantisation
    bits: int  # quantisation levels 2^bits; the ring is Z_2^32
    distributed_dp: bool = False  # sites send noisy integer gradient sums (common/distributed_dp.py)
    unit: float = 0.0  # distributed DP: the value of one integer unit (γ)
    step_size: float = 0.0  # distributed DP: the gradient step the coordinator takes with the mean (lr)

    @classmethod
    def from_config(cls, config: RunConfig) -> SecAggParameters:
        """The parameters of `config` (`secure-aggregation-*` keys, and `distributed-dp`)."""
        from fedward.common.distributed_dp import granularity

        return cls(
            threshold=config.secure_aggregation_threshold,
            clipping_range=config.secure_aggregation_clipping_range,
            bits=config.secure_aggregation_bits,
            distributed_dp=config.distributed_dp,
            unit=granularity(config.dp_max_grad_norm, config.secure_aggregation_bits),
            step_size=config.lr,
        )

    @property
    def target_range(self) -> int:
        """Quantisation levels."""
        return 2**self.bits

    @property
    def max_sites(self) -> int:
        """Most sites whose quantised values (each at most 2^bits) sum without wrapping around 2^32."""
        return (MODULUS - 1) // self.target_range

    def threshold_count(self, num_sites: int) -> int:
        """Shares that reconstruct a secret among `num_sites` participants: ⌈threshold × n⌉, at least 2 and
        more than half (else a coordinator could ask half the sites for a site's self-mask seed and the
        other half for its mask key, and unmask it)."""
        return max(2, num_sites // 2 + 1, math.ceil(self.threshold * num_sites - 1e-9))

    def binding(
        self, server_round: int, weight_unit: float, keys: Mapping[int, tuple[bytes, bytes]]
    ) -> bytes:
        """Digest of everything the masks depend on: the parameters, the round, the weight unit and every
        participant's public keys. Used as the masks' nonce, so that sites told different things make
        masks that do not cancel."""
        document = {
            "threshold": self.threshold,
            "clipping-range": self.clipping_range,
            "bits": self.bits,
            "distributed-dp": self.distributed_dp,
            "server-round": int(server_round),
            "weight-unit": float(weight_unit),
            "keys": [[int(n), keys[n][0].hex(), keys[n][1].hex()] for n in sorted(keys)],
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).digest()


def mask_vector(seed: bytes, binding: bytes, size: int) -> np.ndarray:
    """`size` uniform values of Z_2^32 (uint64): the AES-256-CTR keystream under key SHA-256(seed),
    nonce the first 16 bytes of `binding`."""
    key = hashlib.sha256(b"fedward secure aggregation mask\0" + seed).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(binding[:16])).encryptor()
    stream = encryptor.update(bytes(4 * size)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint64)


def _hkdf(material: bytes, purpose: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 of `material`, `purpose` as its info."""
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedward secure aggregation " + purpose)
    return kdf.derive(material)


def new_secret() -> bytes:
    """A fresh secret to Shamir-share (a self-mask seed, a private key's secret): OS entropy."""
    return os.urandom(SECRET_BYTES)


def share_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` Shamir shares of a 16-byte `secret` (pycryptodome, GF(2^128)), any `threshold` of which
    rebuild it; share i (1-based) is `i` as 4 little-endian bytes and its 16-byte value."""
    if len(secret) != SECRET_BYTES:
        raise SecureAggregationError(f"secure aggregation: a shared secret must be {SECRET_BYTES} bytes")
    shares = Shamir.split(threshold, count, secret, ssss=False)
    return [index.to_bytes(4, "little") + value for index, value in shares]


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret `shares` (at least the threshold's number, from distinct holders) rebuild; ValueError when
    they are malformed or repeat a holder."""
    if any(len(share) != SHARE_BYTES for share in shares):
        raise ValueError(f"a share must be {SHARE_BYTES} bytes")
    return Shamir.combine([(int.from_bytes(s[:4], "little"), s[4:]) for s in shares], ssss=False)


def _private_key(secret: bytes) -> X25519PrivateKey:
    """The X25519 private key of a secret (HKDF of it: the secret is what is Shamir-shared)."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise SecureAggregationError(
            f"secure aggregation: a private key's secret must be {SECRET_BYTES} bytes"
        )
    return X25519PrivateKey.from_private_bytes(_hkdf(secret, b"private key"))


def generate_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair: (its 16-byte secret, the raw 32-byte public key)."""
    secret = new_secret()
    return secret, _private_key(secret).public_key().public_bytes_raw()


def check_public_key(public_key: bytes) -> None:
    """SecureAggregationError unless `public_key` is a raw X25519 public key (32 bytes)."""
    if not isinstance(public_key, bytes) or len(public_key) != KEY_BYTES:
        size = len(public_key) if isinstance(public_key, bytes) else type(public_key).__name__
        raise SecureAggregationError(
            f"secure aggregation: a public key of {size} bytes, expected a raw X25519 key of {KEY_BYTES}"
        )


def _agree(secret: bytes, public_key: bytes, purpose: bytes) -> bytes:
    """32 bytes two sites share: X25519 of one's private key (of `secret`) and the other's public key,
    through HKDF-SHA256 with `purpose` as its info (one key pair never yields the same bytes for two
    purposes)."""
    check_public_key(public_key)
    try:
        shared = _private_key(secret).exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:  # a low-order public key (an all-zero shared secret)
        raise SecureAggregationError(
            "secure aggregation: a key agreement with an invalid public key"
        ) from None
    return _hkdf(shared, purpose)


def pairwise_seed(secret: bytes, public_key: bytes) -> bytes:
    """The seed two sites share: X25519 of one's mask key and the other's public mask key, HKDF'd."""
    return _agree(secret, public_key, b"pairwise mask")


def _associated_data(source: int, destination: int, binding: bytes) -> bytes:
    return struct.pack("<QQ", source, destination) + binding


def encrypt_shares(
    secret: bytes,
    public_key: bytes,
    source: int,
    destination: int,
    binding: bytes,
    shares: tuple[bytes, bytes],
) -> bytes:
    """The two shares `source` sends `destination`: AES-GCM (a fresh nonce first) under the key their
    share-encryption keys agree on, with both nodes and the masks' binding as associated data (so a
    ciphertext replayed from another round, pair or key list does not decrypt)."""
    nonce = os.urandom(NONCE_BYTES)
    key = AESGCM(_agree(secret, public_key, b"share encryption"))
    return nonce + key.encrypt(nonce, b"".join(shares), _associated_data(source, destination, binding))


def decrypt_shares(
    secret: bytes, public_key: bytes, source: int, destination: int, binding: bytes, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """The (self-mask seed share, mask key share) of `encrypt_shares`; SecureAggregationError if the
    ciphertext was not made for this pair and binding."""
    key = AESGCM(_agree(secret, public_key, b"share encryption"))
    associated = _associated_data(source, destination, binding)
    try:
        plaintext = key.decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise SecureAggregationError(
            f"secure aggregation: shares from node {source} that do not decrypt for this round"
        ) from None
    half = len(plaintext) // 2
    return plaintext[:half], plaintext[half:]  # two shares of equally long secrets


def pairwise_sign(own: int, other: int) -> int:
    """+1 when node `own` adds the pair's mask, −1 when it subtracts it (so that the pair cancels)."""
    return 1 if own > other else -1


@dataclass(frozen=True)
class Entry:
    """One floating-point array of the vector: its record, key, shape and dtype."""

    record: str
    key: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """How a train reply's ArrayRecords become one float vector and back (without the weight slot)."""

    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, records: Mapping[str, ArrayRecord]) -> Layout:
        """The floating-point entries of `records` (records by name, keys in record order); an integer
        entry outside the model record is a SecureAggregationError (it could not be averaged)."""
        entries = []
        for name in sorted(records):
            for key, array in records[name].items():
                values = array.numpy()
                if np.issubdtype(values.dtype, np.floating):
                    entries.append(Entry(name, key, tuple(values.shape), str(values.dtype)))
                elif name != WEIGHTED_RECORD:
                    raise SecureAggregationError(
                        f"secure aggregation: ArrayRecord {name!r} holds the integer entry {key!r}; only the "
                        f"model record {WEIGHTED_RECORD!r} may (its integer entries keep the global value)"
                    )
        return cls(tuple(entries))

    @property
    def size(self) -> int:
        """Length of the float vector."""
        return sum(e.size for e in self.entries)

    def weighted(self) -> np.ndarray:
        """True for the values of the model record (weighted by num-examples), False for the others."""
        return np.concatenate([np.full(e.size, e.record == WEIGHTED_RECORD) for e in self.entries] or [[]])

    def flatten(self, records: Mapping[str, ArrayRecord], missing_as_zero: bool = False) -> np.ndarray:
        """The entries of `records` as one float64 vector (an absent record as zeros if `missing_as_zero`)."""
        parts = []
        for e in self.entries:
            if missing_as_zero and e.record not in records:
                parts.append(np.zeros(e.size))
                continue
            values = records[e.record][e.key].numpy()
            if tuple(values.shape) != e.shape:
                raise SecureAggregationError(
                    f"secure aggregation: {e.record}/{e.key} has shape {values.shape}"
                )
            parts.append(values.astype(np.float64).ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def unflatten(self, vector: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Record -> key -> array (in the entry's shape and dtype) of a float vector."""
        out: dict[str, dict[str, np.ndarray]] = {}
        start = 0
        for e in self.entries:
            part = vector[start : start + e.size].reshape(e.shape).astype(e.dtype)
            out.setdefault(e.record, {})[e.key] = part
            start += e.size
        return out

    def to_json(self) -> str:
        """The layout as the site sends it (names, shapes, dtypes; no values)."""
        return json.dumps([[e.record, e.key, list(e.shape), e.dtype] for e in self.entries])

    @classmethod
    def from_json(cls, text: str) -> Layout:
        """The layout a site sent; SecureAggregationError if it is not one."""
        try:
            rows = json.loads(text)
            return cls(
                tuple(
                    Entry(str(r), str(k), tuple(int(n) for n in s), str(np.dtype(d))) for r, k, s, d in rows
                )
            )
        except (ValueError, TypeError) as exc:
            raise SecureAggregationError(
                f"secure aggregation: a site sent an unreadable layout ({exc})"
            ) from None


def weight_ratio(weight: float, weight_unit: float, params: SecAggParameters) -> int:
    """The site's quantised weight: round(min(weight / weight_unit, 1) × 2^bits)."""
    if not (weight_unit > 0 and math.isfinite(weight_unit)):
        raise SecureAggregationError(
            f"secure aggregation: weight unit {weight_unit!r}, expected a number > 0"
        )
    ratio = min(max(float(weight), 0.0) / weight_unit, 1.0)
    return round(ratio * params.target_range)


def encode_contribution(
    values: np.ndarray, weighted: np.ndarray, q_weight: int, params: SecAggParameters
) -> np.ndarray:
    """The site's unmasked ring vector: the model-record values × its quantised weight / 2^bits, the
    others as they are, clipped to ±clipping-range and stochastically quantised (Flower's `quantize`),
    then the quantised weight itself."""
    scale = np.where(weighted, q_weight / params.target_range, 1.0)
    (quantised,) = quantize([values * scale], params.clipping_range, params.target_range)
    return np.concatenate([quantised.astype(np.uint64), np.array([q_weight], dtype=np.uint64)])


def encode_integers(values: np.ndarray) -> np.ndarray:
    """Distributed DP: a site's integer vector (noise share included) in the ring as it is, then a weight
    slot of 1 (the sum's last entry counts the sites)."""
    integers = np.rint(values).astype(np.int64)
    if not np.array_equal(integers, values):
        raise SecureAggregationError("distributed DP: a site's contribution must be whole numbers")
    return np.concatenate([(integers % MODULUS).astype(np.uint64), np.array([1], dtype=np.uint64)])


def decode_integers(total: np.ndarray) -> np.ndarray:
    """Distributed DP: the sites' integer sum from the ring, read as signed (within ±2^31)."""
    values = total[:-1].astype(np.int64)
    return np.where(values >= MODULUS // 2, values - MODULUS, values)


def decode_sum(
    total: np.ndarray, weighted: np.ndarray, num_sites: int, params: SecAggParameters
) -> np.ndarray:
    """The mean of `num_sites` contributions from their unmasked ring sum: the model record's values
    weighted by the sites' quantised weights, the other records' values with equal weights."""
    if num_sites > params.max_sites:
        raise SecureAggregationError(
            f"secure aggregation: {num_sites} sites overflow the ring at secure-aggregation-bits = "
            f"{params.bits} (at most {params.max_sites})"
        )
    q_total = int(total[-1])
    if q_total <= 0:
        raise SecureAggregationError("secure aggregation: the sites' weights sum to 0")
    (sums,) = dequantize([total[:-1].astype(np.int64)], params.clipping_range, params.target_range)
    sums = sums - (num_sites - 1) * params.clipping_range  # each site's value was shifted by +range
    return np.where(weighted, sums * params.target_range / q_total, sums / num_sites)


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy arrays, in the mapping's order."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def check_config(config: RunConfig) -> None:
    """ConfigError, naming the key, for a combination secure aggregation cannot serve."""
    if not config.secure_aggregation:
        return
    if config.strategy not in STRATEGIES:
        raise ConfigError(
            f"secure-aggregation with strategy = {config.strategy!r}: it needs more than the weighted mean "
            f"of the updates (individual updates or per-site models); use one of {', '.join(STRATEGIES)}"
        )
    if config.central_dp:
        raise ConfigError(
            "secure-aggregation with central-dp: central DP clips each site's update at the server"
        )
    if config.max_update_norm > 0:
        raise ConfigError(
            "secure-aggregation with max-update-norm > 0: the server never sees an individual update to "
            "check its norm; each site clips its own weighted update to secure-aggregation-clipping-range "
            "per coordinate"
        )
    if config.hostile_sites and config.hostile_mode != "label-flip":
        raise ConfigError(
            f"secure-aggregation with hostile-mode = {config.hostile_mode!r}: a simulated hostile site "
            "corrupts its update after training, which secure aggregation has already masked; use label-flip"
        )
    if config.cross_site_local:
        raise ConfigError(
            "secure-aggregation with cross-site-local: each site would send its local-only model in the clear"
        )
    if config.audit_dir:
        raise ConfigError(
            "secure-aggregation with audit-dir: the audit's coordinator scores each site's own update, which "
            "secure aggregation hides; audit a run without it (its bound then covers the stronger adversary)"
        )

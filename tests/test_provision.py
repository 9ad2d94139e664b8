"""`server.deployment.provision`: CA, SuperLink certificate, site kits, key modes, no silent key overwrite."""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedward.common.errors import ConfigError
from fedward.server.deployment.provision import Federation, load_site_kit, numbered_sites, provision


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    """A two-site federation with one DNS name and one IP besides the loopback names."""
    return provision(tmp_path / "fed", ["H1", "site_2"], sans=["fl.example.org", "10.1.2.3"])


def _private_keys(fed: Federation) -> list[Path]:
    return [fed.ca_key, fed.server_key, *(kit.private_key for kit in fed.sites.values())]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_layout(fed: Federation, tmp_path: Path) -> None:
    root = tmp_path / "fed"
    coordinator = root / "coordinator"
    expected = [
        coordinator / name
        for name in ("ca.crt", "ca.key", "superlink.crt", "superlink.key", "flwr-config.toml")
    ]
    for site in ("H1", "site_2"):
        expected.append(coordinator / "site-public-keys" / f"{site}.pub")
        kit = root / "sites" / site
        names = ("ca.crt", f"{site}.key", f"{site}.pub", "node-config.toml", "README.md")
        expected += [kit / n for n in names]
    for path in expected:
        assert path.is_file(), path
    assert fed.name == "fed"
    assert fed.sites["H1"].dir == root / "sites" / "H1"
    assert (root / "sites" / "H1" / "ca.crt").read_bytes() == fed.ca_cert.read_bytes()
    assert fed.site_public_keys["H1"].read_bytes() == fed.sites["H1"].public_key.read_bytes()


def test_private_keys_are_0600_and_public_files_are_not_secret(fed: Federation) -> None:
    for key in _private_keys(fed):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for public in (fed.ca_cert, fed.server_cert, fed.sites["H1"].public_key, fed.sites["H1"].readme):
        assert stat.S_IMODE(public.stat().st_mode) & 0o044, public


def test_ca_and_server_certificate(fed: Federation) -> None:
    ca, server = _cert(fed.ca_cert), _cert(fed.server_cert)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1")}
    # long, stated lifetimes: 10 years for the CA, 825 days for the server certificate
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    server_days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert ca_days >= 3650 and 825 <= server_days <= 826
    assert fed.ca_expires == ca.not_valid_after_utc
    readme = fed.sites["H1"].readme.read_text()
    assert ca.not_valid_after_utc.strftime("%Y-%m-%d") in readme
    # the server key in superlink.key is the one certified
    server_key = serialization.load_pem_private_key(fed.server_key.read_bytes(), password=None)
    assert server_key.public_key() == server.public_key()


def test_site_key_is_openssh_ec_p384(fed: Federation) -> None:
    kit = fed.sites["H1"]
    key = serialization.load_ssh_private_key(kit.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    line = kit.public_key.read_text()
    assert line.startswith("ecdsa-sha2-nistp384 ")
    assert serialization.load_ssh_public_key(line.encode()) == key.public_key()
    # each site has its own key
    other = serialization.load_ssh_private_key(fed.sites["site_2"].private_key.read_bytes(), password=None)
    assert other.public_key() != key.public_key()


def test_flwr_profile_and_node_config(fed: Federation) -> None:
    profile = tomllib.loads(fed.flwr_config.read_text())["superlink"]["fed"]
    assert profile == {"address": "fl.example.org:8000", "root-certificates": str(fed.ca_cert)}
    assert Path(profile["root-certificates"]).is_absolute()
    node = tomllib.loads(fed.sites["site_2"].node_config.read_text())
    assert set(node) == {"site-id", "data-dir", "policy-file", "state-dir"}
    assert node["site-id"] == "site_2"
    readme = fed.sites["H1"].readme.read_text()
    assert "fedward site start --kit DIR --data DIR" in readme
    assert "fl.example.org:8000" in readme and "H1.key" in readme


def test_second_provision_refuses_then_force_replaces(fed: Federation, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in _private_keys(fed)}
    with pytest.raises(ConfigError, match=r"ca\.key"):
        provision(tmp_path / "fed", ["H1", "site_2"], sans=["fl.example.org"])
    assert {p: p.read_bytes() for p in before} == before
    # a single existing site key is enough to refuse, and it is named
    fed.ca_key.unlink()
    fed.server_key.unlink()
    with pytest.raises(ConfigError, match=r"H1\.key"):
        provision(tmp_path / "fed", ["H1"])
    assert fed.sites["H1"].private_key.read_bytes() == before[fed.sites["H1"].private_key]

    again = provision(tmp_path / "fed", ["H1", "site_2"], force=True)
    for path in _private_keys(again):
        assert path.read_bytes() != before.get(path), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "fed").rglob("*.tmp"))
    _cert(again.server_cert).verify_directly_issued_by(_cert(again.sites["H1"].ca_cert))


def test_force_restores_mode_of_loosened_key(fed: Federation, tmp_path: Path) -> None:
    fed.sites["H1"].private_key.chmod(0o644)
    again = provision(tmp_path / "fed", ["H1", "site_2"], force=True)
    assert stat.S_IMODE(again.sites["H1"].private_key.stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", ["", "a b", "../x", "H1/x", "h.1", "é", "x" * 65])
def test_bad_site_names_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        provision(tmp_path / "fed", ["ok", bad])
    assert not (tmp_path / "fed").exists()


def test_duplicate_and_empty_site_lists_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="twice"):
        provision(tmp_path / "fed", ["H1", "H2", "H1"])
    with pytest.raises(ConfigError, match="twice"):
        provision(tmp_path / "fed", ["h1", "H1"])
    with pytest.raises(ConfigError, match="at least one"):
        provision(tmp_path / "fed", [])


def test_bad_options_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SAN"):
        provision(tmp_path / "fed", ["H1"], sans=["not a host"])
    with pytest.raises(ConfigError, match="outlive"):
        provision(tmp_path / "fed", ["H1"], ca_days=100, server_days=200)
    with pytest.raises(ConfigError, match="federation name"):
        provision(tmp_path / "bad name", ["H1"])


def test_numbered_sites() -> None:
    assert numbered_sites(3) == ["site-1", "site-2", "site-3"]
    with pytest.raises(ConfigError):
        numbered_sites(0)


def test_ipv6_first_san_is_bracketed(tmp_path: Path) -> None:
    fed = provision(tmp_path / "fed", ["H1"], sans=["::1"], port=9443)
    assert fed.address == "[::1]:9443"


def test_load_site_kit(fed: Federation, tmp_path: Path) -> None:
    kit = load_site_kit(fed.sites["H1"].dir)
    assert kit == fed.sites["H1"]
    # the folder may be renamed: the site name comes from node-config.toml
    moved = fed.sites["H1"].dir.rename(tmp_path / "kit-copy")
    assert load_site_kit(moved).site == "H1"


@pytest.mark.parametrize("name", ["ca.crt", "H1.key", "H1.pub", "node-config.toml"])
def test_load_site_kit_names_missing_file(fed: Federation, name: str) -> None:
    (fed.sites["H1"].dir / name).unlink()
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_site_kit(fed.sites["H1"].dir)


def test_load_site_kit_rejects_unsafe_or_mismatched_keys(fed: Federation) -> None:
    kit = fed.sites["H1"]
    kit.private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_site_kit(kit.dir)
    kit.private_key.chmod(0o600)
    kit.public_key.write_bytes(fed.sites["site_2"].public_key.read_bytes())
    with pytest.raises(ConfigError, match="does not match"):
        load_site_kit(kit.dir)


@pytest.fixture()
def open_umask() -> Iterator[None]:
    """umask 000: every file and folder would be made world-writable unless its mode is set exactly."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    fed = provision(tmp_path / "new" / "fed", ["H1", "H2"])
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (fed.root, fed.root / "sites")}
    assert modes == {fed.root: 0o750, fed.root / "sites": 0o750}
    for folder in (
        fed.coordinator,
        fed.coordinator / "site-public-keys",
        *(k.dir for k in fed.sites.values()),
    ):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in fed.root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o022, f"{path} {mode:04o}"
        if path.suffix == ".key":
            assert mode == 0o600, path


def test_an_existing_folder_loses_write_access_for_others(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    root.mkdir()
    root.chmod(0o777)
    provision(root, ["H1"])
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "loosened", ["coordinator", "coordinator/site-public-keys", "coordinator/site-public-keys/H1.pub"]
)
def test_coordinator_refuses_keys_others_could_have_written(fed: Federation, loosened: str) -> None:
    from fedward.server.deployment.superlink import load_federation

    target = fed.root / loosened
    target.chmod(stat.S_IMODE(target.stat().st_mode) | 0o002)
    with pytest.raises(ConfigError, match=f"{target}: writable by other accounts.*refusing to register"):
        load_federation(fed.root)


def test_coordinator_refuses_a_symlinked_site_key(fed: Federation, tmp_path: Path) -> None:
    from fedward.server.deployment.superlink import load_federation

    key = fed.coordinator / "site-public-keys" / "H1.pub"
    elsewhere = tmp_path / "planted.pub"
    elsewhere.write_bytes(key.read_bytes())
    key.unlink()
    key.symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_federation(fed.root)

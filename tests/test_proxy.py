"""server/deployment/proxy.py and the operator certificate: the nginx configuration against the installed
Flower, and site key rotation (the real proxy in front of a real federation: tests/test_deployment_run.py)."""

from __future__ import annotations

import re
from pathlib import Path

import flwr
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flower_processes import require_nginx

from fedward.server.deployment import proxy, superlink
from fedward.server.deployment.provision import Federation, provision, rotate_site_key, ssh_fingerprint

FLWR = Path(flwr.__file__).parent


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return provision(tmp_path / "fed", ["H1", "H2"], sans=["127.0.0.1"], port=8123, name="proxyfed")


def _config(fed: Federation, tmp_path: Path) -> proxy.ProxyConfig:
    return proxy.ProxyConfig(
        listen_host="127.0.0.1",
        listen_port=8123,
        upstream_port=8124,
        server_cert=fed.server_cert,
        server_key=fed.server_key,
        ca_cert=fed.ca_cert,
        state_dir=tmp_path / "state",
    )


def test_fleet_allow_list_is_what_flowers_supernode_calls() -> None:
    client = (FLWR / "supernode" / "fleet_http_client.py").read_text()
    called = set(re.findall(r'path="/v1/fleet/([a-z-]+)"', client))
    # a SuperNode with an authentication key never registers or unregisters itself over the Fleet API
    assert set(proxy.FLEET_PATHS) == called - {"register-node", "unregister-node"}
    router = (FLWR / "superlink" / "routers" / "fleet" / "router.py").read_text()
    assert set(proxy.FLEET_PATHS) <= set(re.findall(r'@router\.post\("/([a-z-]+)"\)', router))


def test_nginx_config_passes_the_fleet_api_and_gates_the_control_api(fed: Federation, tmp_path: Path) -> None:
    text = proxy.render_nginx_config(_config(fed, tmp_path))
    locations = re.findall(r"location (.+?) \{", text)
    assert locations == [f"~ ^/v1/fleet/({'|'.join(proxy.FLEET_PATHS)})$", "/v1/control/", "/"]
    assert "if ($fedward_operator = 0) { return 403; }" in text
    assert f'"~^SUCCESS:(.*,)?OU={proxy.OPERATOR_OU}(,.*)?$" 1;' in text
    assert (
        "location / { return 404; }" in text and "/v1/runtime" not in text
    )  # the ServerApp's API stays inside
    assert "listen 127.0.0.1:8123 ssl;" in text and "server 127.0.0.1:8124;" in text
    assert "proxy_ssl_verify on;" in text and f"ssl_client_certificate {fed.ca_cert};" in text


def test_nginx_accepts_the_written_config(fed: Federation, tmp_path: Path) -> None:
    require_nginx()
    conf = proxy.write_nginx_config(_config(fed, tmp_path))
    proxy.check_nginx_config(conf)  # `nginx -t`
    assert conf.stat().st_mode & 0o077 == 0


def test_provision_issues_an_operator_client_certificate(fed: Federation) -> None:
    assert fed.operator_cert is not None and fed.operator_key is not None
    cert = x509.load_pem_x509_certificate(fed.operator_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == proxy.OPERATOR_OU
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert fed.operator_key.stat().st_mode & 0o777 == 0o600
    files = superlink.load_federation(fed.root)
    assert (files.operator_cert, files.operator_key) == (fed.operator_cert, fed.operator_key)


def test_rotate_site_key_writes_a_new_pair_everywhere_it_is_needed(fed: Federation) -> None:
    kit = fed.sites["H1"]
    old_public = kit.public_key.read_text()
    new_private = rotate_site_key(fed.root, "H1", fed.name)
    assert new_private == kit.private_key and kit.private_key.stat().st_mode & 0o777 == 0o600
    public = kit.public_key.read_text()
    assert public != old_public and fed.site_public_keys["H1"].read_text() == public
    key = serialization.load_ssh_private_key(kit.private_key.read_bytes(), password=None)
    assert key.public_key() == serialization.load_ssh_public_key(public.encode())
    readme = kit.readme.read_text()
    assert ssh_fingerprint(public) in readme and ssh_fingerprint(old_public) not in readme
    assert fed.sites["H2"].public_key.read_text() == fed.site_public_keys["H2"].read_text()  # untouched

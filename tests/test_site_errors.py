"""A site's failure reaches the coordinator as a reason code and a short message: no path, no traceback,
and the site's name; the full detail stays in the site's log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Context, Message, RecordDict
from inprocess_grid import FIRST_NODE, InProcessGrid, ckd_run_config, run_server

from fedward.client.mods import SITE_CONFIG_ERROR, SITE_ERROR, safe_errors_mod
from fedward.common.errors import FedwardError
from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SECRET = "st-elsewhere-oncology"


def _context() -> Context:
    return Context(
        run_id=7, node_id=5, node_config={"site-id": "hospital-a"}, state=RecordDict(), run_config={}
    )


def test_an_exception_leaves_the_site_as_a_short_error_without_path(caplog: pytest.LogCaptureFixture) -> None:
    message = Message(RecordDict({}), dst_node_id=5, message_type="train")

    def handler(_msg: Message, _context: Context) -> Message:
        raise KeyError(f"/srv/{SECRET}/patients/123.csv")

    with caplog.at_level(logging.ERROR, logger="fedward.client"):
        reply = safe_errors_mod(message, _context(), handler)
    assert reply.has_error() and reply.error.code == SITE_ERROR
    assert reply.error.reason == "site hospital-a: KeyError (details in the site's log)"
    assert SECRET in caplog.text and "Traceback" in caplog.text  # the full detail stays at the site


def test_a_site_with_a_missing_data_folder_is_named_without_its_path(sites: Path, tmp_path: Path) -> None:
    config = ckd_run_config(sites, tmp_path, **{"dp": False, "num-server-rounds": 1})
    grid = InProcessGrid(config, 2)
    grid.contexts[FIRST_NODE + 1].node_config.update(
        {"site-id": "hospital-b", "data-dir": f"/data/{SECRET}/ckd"}
    )
    with pytest.raises(FedwardError) as failed:
        run_server(grid, config)
    errors = [r for r in grid.replies if r.has_error()]
    assert [e.error.code for e in errors] == [SITE_CONFIG_ERROR]
    reason = errors[0].error.reason
    assert reason.startswith(
        "site hospital-b: ConfigError: site hospital-b: data folder <path> does not exist"
    )
    for text in (reason, str(failed.value)):
        assert SECRET not in text and "Traceback" not in text and "/data" not in text
    assert "hospital-b" in str(failed.value)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    prepare_ckd_sites(root, 2, "iid")
    return root

"""The fedward ClientApp: federated statistics, private local training and evaluation.

Only model arrays and aggregate numbers leave the site: feature moments, metrics, ε.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import load_site, site_source
from common.config import RunConfig
from common.device import pick_device
from common.privacy import PrivacyHistory, resolve_delta
from common.tasks import get_task
from common.training import train_model

app = ClientApp()
log = logging.getLogger("fedward.client")

PRIVACY_STATE = "privacy"


def _setup(context: Context):
    config = RunConfig.from_flower(context.run_config)
    source = site_source(context, config)
    return config, get_task(config.task), source, load_site(source, config)


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    """Reply with the site's aggregate feature statistics and its data report (counts only)."""
    _, task, source, site = _setup(context)
    for line in site.details:
        log.warning("site %s: %s", source.site_id, line)
    stats = task.statistics(site) or {}
    content = RecordDict(
        {
            "statistics": MetricRecord({**stats, "num-examples": site.num_train}),
            "report": MetricRecord({**site.report, "num-train": site.num_train, "num-test": site.num_test}),
            "site": ConfigRecord({"site-id": source.site_id}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local (DP-SGD) training from the global model."""
    config, task, source, site = _setup(context)
    shared = msg.content["config"]
    server_round = int(shared.get("server-round", 1))
    device = pick_device(config.device)
    train_set, _ = task.datasets(site, shared)
    model = task.build_model(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())

    history = PrivacyHistory.from_config(context.state.get(PRIVACY_STATE))
    delta = resolve_delta(config.dp_delta, site.num_train) if config.dp else 0.0
    outcome = train_model(
        model,
        train_set,
        task.loss,
        config.local_training(server_round, source.partition_index),
        config.privacy if config.dp else None,
        delta=delta,
        planned_rounds=config.num_server_rounds,
        device=device,
    )
    history.extend(outcome.privacy_steps)
    context.state[PRIVACY_STATE] = ConfigRecord({**history.to_config(), "delta": delta})
    epsilon = history.epsilon(delta, config.dp_accountant) if config.dp else 0.0

    metrics = {
        "num-examples": outcome.num_examples,
        "train-loss": outcome.loss,
        "epsilon": epsilon,
        "delta": delta,
        "noise-multiplier": outcome.noise_multiplier,
        "steps": outcome.steps,
        "privacy-steps": history.steps,
    }
    model.to("cpu")
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's held-out split."""
    config, task, _, site = _setup(context)
    _, test_set = task.datasets(site, msg.content["config"])
    model = task.build_model(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    with torch.no_grad():
        metrics = task.evaluate(model, test_set, pick_device(config.device))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

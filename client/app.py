"""The fedward ClientApp: federated statistics, private local training and evaluation.

Every value a site sends is listed in docs/privacy.md: model arrays and numbers inside the site's DP
accounting, or aggregates its policy allows (evaluation cells of at least its minimum cell count).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import NamedTuple

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch.utils.data import Dataset

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.client.distributed_dp import distributed_share, ledger_label, sites_in_sum
from fedward.client.mods import safe_errors_mod
from fedward.client.policy import min_cell_count
from fedward.client.run_state import SiteRunState
from fedward.client.secure_aggregation import secure_aggregation_mod
from fedward.client.site import (
    load_site_for_run,
    phi_gate_mode,
    seeded_noise_refusal,
    site_privacy,
    site_source,
)
from fedward.client.site_report import public_report
from fedward.client.statistics_release import kept_count, release_statistics, site_delta
from fedward.common.algorithms.base import SiteHook, TrainedRound, pick
from fedward.common.algorithms.registry import site_hook
from fedward.common.config import RunConfig
from fedward.common.device import pick_device
from fedward.common.disclosure import release_evaluation
from fedward.common.dp_release import release_entry
from fedward.common.errors import PrivacyError
from fedward.common.privacy import Mechanism, PrivacyHistory
from fedward.common.tasks import SiteData, SiteSource, Task, get_task
from fedward.common.training import TrainOutcome, train_model
from fedward.common.transfer import encode_reply

log = logging.getLogger("fedward.client")

PRIVACY_STATE = "privacy"
RELEASES_KEY = "release-noise-multiplier"  # in PRIVACY_STATE: σ of the run's statistics release, if it paid
RELEASE_STATE = "statistics-release"  # the site's noisy patient count, sent as num-examples under DP
REFUSED = 4030  # error code of a round the site's privacy policy refuses
LOCAL_ONLY_ROUND = 0  # the round number local-only training is seeded and recorded under


class _Setup(NamedTuple):
    """What every handler starts from."""

    config: RunConfig
    task: Task
    source: SiteSource
    site: SiteData
    privacy: SitePrivacy


@dataclasses.dataclass(frozen=True)
class _Training:
    """How one training call differs: a federated round, or local-only training for the cross-site matrix."""

    number: int  # the round its ledger entry and its seeds are recorded under
    rounds: int  # rounds of planned steps it takes (local-only: the whole run's)
    hook: SiteHook  # the strategy's site half (local-only: the plain hook, no strategy terms)
    proximal_mu: float
    what: str  # for the refusal log


train_set_view: ContextVar[Callable[[Dataset, torch.nn.Module], Dataset] | None] = ContextVar(
    "train_set_view", default=None
)
"""How a simulation mod sees a federated round's training set (client/hostile.py: label flips);
unset, the training set is the site's own (always, at a deployed site: no mod sets it)."""


def _setup(context: Context) -> _Setup:
    """Run config, task, data source and data of the site; SiteDataError (sent as a refusal) when its
    data does not load: the site sits the run out."""
    config = RunConfig.from_flower(context.run_config)
    source = site_source(context, config)
    privacy = site_privacy(context, config)  # the policy file, read once per message
    site = load_site_for_run(source, config, phi_gate_mode(privacy))
    return _Setup(config, get_task(config.task), source, site, privacy)


def _refused(msg: Message, source: SiteSource, reason: str) -> Message:
    """The error reply of a refusal by the site's policy or budget."""
    return Message(Error(code=REFUSED, reason=f"site {source.site_id} refused: {reason}"), reply_to=msg)


def statistics(msg: Message, context: Context) -> Message:
    """Reply with the site's statistics release (noisy per-patient sums under DP) and its data report."""
    config, task, source, site, privacy = _setup(context)
    for line in site.details:
        log.warning("site %s: %s", source.site_id, line)
    refusal = seeded_noise_refusal(context, config, privacy)
    budget = SiteBudget(privacy, site)
    run_id = str(msg.content["config"].get("run-uid") or context.run_id)
    release = refusal or release_statistics(config, task, site, budget, run_id)
    if isinstance(release, str):
        log.warning("site %s refuses the statistics release: %s", source.site_id, release)
        return _refused(msg, source, release)
    delta = site_delta(config, budget, site.num_train) if config.dp else 0.0
    if release.drawn_now:  # this run paid for it: it joins the run's privacy history
        history = _history(context)
        history.extend([release_entry(release.noise_multiplier)])
        _keep_history(context, history, delta, releases=[release.noise_multiplier])
    context.state[RELEASE_STATE] = ConfigRecord({"num-examples": release.num_patients})
    report = public_report(site.report, min_cell_count(budget.policy, config))  # no exact sizes
    report.update({"num-train": release.num_patients, "num-test": site.num_test})
    content = RecordDict(
        {
            "statistics": MetricRecord(release.record(delta, config.dp_accountant)),
            "report": MetricRecord(report),
            "site": ConfigRecord({"site-id": source.site_id, "fingerprint": budget.public_fingerprint}),
        }
    )
    return Message(content=content, reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """One round of local (DP-SGD) training from the global model, with the run strategy's site terms,
    unless the site's policy or lifetime budget refuses it: then an error reply with the reason, and no
    training step."""
    started = time.perf_counter()
    setup = _setup(context)
    shared = msg.content["config"]
    server_round = int(shared.get("server-round", 1))
    run_state = SiteRunState(setup.privacy.state_dir, str(shared.get("run-uid", "")), PRIVACY_STATE)
    if run_state.restore(context.state, server_round):
        log.info("site %s: run state restored from %s (resumed run)", setup.source.site_id, run_state.folder)
    how = _Training(
        number=server_round,
        rounds=1,
        hook=site_hook(setup.config.strategy),
        proximal_mu=float(shared.get("proximal-mu", 0.0)),
        what=f"round {server_round}",
    )
    reply = _train_privately(msg, context, setup, how)
    if reply.has_error():
        return reply
    run_state.save(context.state, server_round)
    reply.content["metrics"]["site-seconds"] = time.perf_counter() - started  # the site's own compute
    if not setup.config.distributed_dp:  # a distributed-DP share stays whole numbers
        encode_reply(reply.content, setup.config.transfer_dtype)  # after DP noise: post-processing
    return reply


def train_local(msg: Message, context: Context) -> Message:
    """Train a local-only model from the sent initial weights with the local compute of the whole
    federated run (rounds x local epochs), for the cross-site matrix. The same policy checks and privacy
    accounting as federated rounds apply; no strategy terms, no site state is touched."""
    setup = _setup(context)
    rounds = setup.config.num_server_rounds
    how = _Training(LOCAL_ONLY_ROUND, rounds, SiteHook(), proximal_mu=0.0, what="local-only training")
    return _train_privately(msg, context, setup, how)


def _train_privately(msg: Message, context: Context, setup: _Setup, how: _Training) -> Message:
    """The one training path: refuse (policy) → plan and reserve the steps (budget) → train → account.

    A refusal is an error reply before any step; the reply otherwise carries the trained arrays, the
    metrics `_account` allows, and the strategy hook's records."""
    config, task, source, site, privacy = setup
    shared = msg.content["config"]
    run_id = str(shared.get("run-uid") or context.run_id)
    if (refusal := seeded_noise_refusal(context, config, privacy)) is not None:
        return _refused(msg, source, refusal)
    sites, label = 0, "train"
    if config.distributed_dp:
        sites, refusal = sites_in_sum(shared, privacy.policy)
        if refusal is not None:
            return _refused(msg, source, refusal)
        label = ledger_label(sites)
    budget = SiteBudget(privacy, site)
    history = _history(context)
    per_round = budget.plan(config, site.num_train, spent=_releases(context), state=context.state)
    plan = dataclasses.replace(per_round, steps=per_round.steps * how.rounds) if per_round else None
    reason = _no_count(context, budget, plan) or budget.reserve(
        config, plan, site.num_train, history, run_id, how.number, label
    )
    if reason is not None:
        log.warning("site %s refuses %s: %s", source.site_id, how.what, reason)
        return _refused(msg, source, reason)

    task.receive(msg.content)  # the run's inputs (e.g. a frozen segmenter), if the task has any
    train_set, _ = task.datasets(site, shared)
    model = task.build_model(config)
    global_state = msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(how.hook.model_state(global_state, shared, context.state))
    start = pick(model.state_dict(), [name for name, _ in model.named_parameters()])
    if (view := train_set_view.get()) is not None:
        train_set = view(train_set, model)
    if config.distributed_dp and plan is not None:  # a noisy gradient sum in place of a model
        outcome, share = distributed_share(
            model, train_set, task.loss, config, plan, sites, pick_device(config.device)
        )
        metrics = _account(context, budget, history, plan, outcome, config)
        arrays = ArrayRecord({key: Array(value) for key, value in share.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
    local = config.local_training(how.number, source.partition_index)
    local = dataclasses.replace(local, epochs=local.epochs * how.rounds)
    outcome = train_model(
        model,
        train_set,
        task.loss,
        local,
        config.privacy if plan else None,
        mechanism=plan,
        device=pick_device(config.device),
        proximal_mu=how.proximal_mu,
        correction=how.hook.correction(msg.content, context.state, start),
        grad_sample_mode=task.grad_sample_mode,
    )
    metrics = _account(context, budget, history, plan, outcome, config)
    model.to("cpu")
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    trained = TrainedRound(msg.content, context.state, model, start, outcome.steps, local.lr)
    for key, record in how.hook.finish(trained).items():
        content[key] = record
    return Message(content=content, reply_to=msg)


def _account(
    context: Context,
    budget: SiteBudget,
    history: PrivacyHistory,
    plan: Mechanism | None,
    outcome: TrainOutcome,
    config: RunConfig,
) -> dict[str, float]:
    """Add the steps really taken to the run's history and the lifetime ledger; the reply's metrics.

    Under DP the site's size goes out only as its noisy patient count (the statistics release) and the
    training loss not at all: it is computed on the private batches without noise."""
    history.extend(outcome.privacy_steps)
    delta = plan.delta if plan else 0.0
    _keep_history(context, history, delta)
    if plan is not None:
        budget.settle(outcome.privacy_steps)
        epsilon = history.epsilon(delta, config.dp_accountant)
        lifetime = budget.history(history).epsilon(delta, config.dp_accountant)
    else:
        epsilon = lifetime = math.inf
    private = plan is not None
    count = _released_count(context, budget) if private else outcome.num_examples
    if count is None:  # checked before training (`_no_count`): the exact size never goes out under DP
        raise PrivacyError("no statistics release to report the site's size from")
    return {
        "num-examples": count,
        "site-weight": 1,  # equal weights, for central DP (uniform FedAvg)
        **({} if private else {"train-loss": outcome.loss}),
        "epsilon": epsilon,  # this run
        "epsilon-lifetime": lifetime,  # every run on this data set (ledger), else this run
        "epsilon-cap": budget.cap(),
        "delta": delta,
        "noise-multiplier": outcome.noise_multiplier,
        "steps": outcome.steps,
        "privacy-steps": history.steps,
    }


def _released_count(context: Context, budget: SiteBudget) -> int | None:
    """The site's noisy patient count from this run's statistics release, else from the release kept
    beside its ledger; None when it has neither (then it must not train privately: its exact size
    would be all it could report)."""
    released = context.state.get(RELEASE_STATE)
    if released is not None:
        return int(released["num-examples"])
    return kept_count(budget)


def _no_count(context: Context, budget: SiteBudget, plan: Mechanism | None) -> str | None:
    """Why a private round cannot start: no noisy count to send as num-examples."""
    if plan is None or _released_count(context, budget) is not None:
        return None
    return "no statistics release in this run (the site sends no exact patient count under DP)"


def _history(context: Context) -> PrivacyHistory:
    """This run's privacy history at the site (statistics release and training steps)."""
    return PrivacyHistory.from_config(context.state.get(PRIVACY_STATE))


def _releases(context: Context) -> tuple[tuple[float, float, int], ...]:
    """The one-off releases this run made before training (the statistics), as history entries."""
    record = context.state.get(PRIVACY_STATE)
    sigmas = record.get(RELEASES_KEY, []) if record is not None else []
    return tuple(release_entry(float(s)) for s in sigmas)


def _keep_history(
    context: Context, history: PrivacyHistory, delta: float, releases: list[float] | None = None
) -> None:
    """Store the run's history in `context.state` (with its releases, kept across rounds)."""
    kept = [float(e[0]) for e in _releases(context)] + list(releases or [])
    record = {**history.to_config(), "delta": delta}
    if kept:
        record[RELEASES_KEY] = kept
    context.state[PRIVACY_STATE] = ConfigRecord(record)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's held-out split."""
    started = time.perf_counter()
    config, task, _, site, privacy = _setup(context)
    shared = msg.content["config"]
    task.receive(msg.content)
    _, test_set = task.datasets(site, shared)
    model = task.build_model(config)
    global_state = msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(site_hook(config.strategy).model_state(global_state, shared, context.state))
    final = int(shared.get("server-round", 0)) >= config.num_server_rounds
    with torch.no_grad():  # confidence intervals (bootstrap at the site) for the final model only
        metrics = task.evaluate(model, test_set, pick_device(config.device), intervals=final)
    metrics = release_evaluation(metrics, min_cell_count(privacy.policy, config))  # small cells
    metrics["site-weight"] = 1  # strategies weighted by site need it in evaluation replies too
    metrics["site-seconds"] = time.perf_counter() - started
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def site_app(*mods: Mod) -> ClientApp:
    """The site's ClientApp; `mods` run first, outside the safe-error mod (a simulation hands its run
    config, simulated faults and hostile sites in this way; a deployed site's app has none). The
    secure-aggregation mod runs inside the safe-error mod, and is inert without its record."""
    built = ClientApp(mods=[*mods, safe_errors_mod, secure_aggregation_mod])
    built.query("statistics")(statistics)
    built.train()(train)
    built.train("local")(train_local)
    built.evaluate()(evaluate)
    return built


app = site_app()

"""The one local training and evaluation loop, with or without Opacus DP-SGD."""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedward.common.audit.canaries import CanaryInjection, active_canaries
from fedward.common.errors import PrivacyError
from fedward.common.local_training import OPTIMIZERS, LocalTraining
from fedward.common.privacy import DPConfig, Mechanism, plan_mechanism, steps_per_epoch

# Opacus' per-sample hooks fire on inputs that need no gradient; harmless and noisy.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass
class TrainOutcome:
    """What one round of local training did."""

    loss: float
    num_examples: int
    steps: int
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    privacy_steps: list[tuple[float, float, int]] = field(default_factory=list)


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Plain SGD (default) or Adam; Opacus wraps either for DP-SGD / DP-Adam."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def privacy_generator(device: torch.device | str, seed: int | None = None) -> torch.Generator:
    """A generator for DP noise or Poisson sampling: 64 fresh bits of OS entropy, never stored.

    `seed` is for the seeded research switch only: whoever knows it can replay the noise.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(64) if seed is None else seed)


def poisson_loader(dataset: Dataset, steps: int, generator: torch.Generator) -> DataLoader:
    """Opacus' Poisson-sampling loader at rate 1 / `steps`, taking exactly `steps` batches per epoch.

    Opacus' own sampler takes int(1 / q) batches, which float rounding makes `steps - 1` for some sizes
    while the accountant is told q = 1 / len(loader): plan, steps taken and accounting must agree.
    """
    from opacus.data_loader import DPDataLoader

    loader = DPDataLoader(dataset, sample_rate=1.0 / steps, generator=generator)
    loader.batch_sampler.steps = steps
    return loader


def local_mechanism(
    dp: DPConfig | None,
    num_examples: int,
    local: LocalTraining,
    *,
    delta: float = 0.0,
    planned_rounds: int = 1,
) -> Mechanism | None:
    """`plan_mechanism` for `local`'s batch size and epochs (None without DP), for callers without a site
    budget (baselines, benchmarks, tests); a site plans in client/budget.py."""
    if dp is None or not dp.enabled:
        return None
    return plan_mechanism(
        dp,
        num_examples=num_examples,
        batch_size=local.batch_size,
        epochs=local.epochs,
        delta=delta,
        planned_rounds=planned_rounds,
    )


def train_model(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    local: LocalTraining,
    dp: DPConfig | None,
    *,
    mechanism: Mechanism | None = None,
    device: torch.device | str = "cpu",
    proximal_mu: float = 0.0,
    correction: Mapping[str, torch.Tensor] | None = None,
    grad_sample_mode: str = "hooks",
) -> TrainOutcome:
    """Train `model` in place on `dataset` for `local.epochs` epochs.

    With `dp` enabled, Opacus DP-SGD (clipping at `dp.max_grad_norm`, `dp.accountant`) runs the planned
    `mechanism` as given: its σ, its Poisson rate q and its steps (`common.privacy.plan_mechanism`
    decides them; nothing is re-resolved here). The returned `privacy_steps` is the accountant's history
    of the steps really taken.

    `proximal_mu` > 0 adds FedProx's μ/2·||w - w_start||² to the objective (w_start: the weights the
    model has on entry, i.e. the global model); `correction` (parameter name → tensor) adds SCAFFOLD's
    ⟨w, c - c_i⟩. See `_parameter_terms` for how both reach the update, with or without Opacus.

    `grad_sample_mode` is how Opacus computes per-sample gradients (the task's `Task.grad_sample_mode`:
    "hooks", "functorch" or "ew"); it changes the speed, not the gradients or the privacy.
    """
    private = dp is not None and dp.enabled
    n = len(dataset)
    model.to(device).train()
    params = dict(model.named_parameters())
    anchor = {k: p.detach().clone() for k, p in params.items()} if proximal_mu > 0 else None
    correction = {k: c.to(params[k]) for k, c in (correction or {}).items() if k in params}
    optimizer = make_optimizer(local.optimizer, model, local.lr)
    sigma, q = 0.0, 0.0
    engine = None
    train_module = model
    canaries = active_canaries.get()  # audit only (simulations): never set at a deployed site
    if private:
        per_epoch = _planned_steps_per_epoch(mechanism, n, local)
        assert dp is not None and mechanism is not None
        sigma, q = mechanism.noise_multiplier, mechanism.sample_rate
        seeds = (local.seed, local.seed + 1) if local.seeded_noise else (None, None)
        loader = poisson_loader(dataset, per_epoch, privacy_generator("cpu", seeds[0]))
        from opacus import PrivacyEngine  # Opacus loads in ~2.5 s: only for private training

        with warnings.catch_warnings():  # secure_mode needs torchcsprng; see docs/privacy.md
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=dp.accountant)
            train_module, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=False,  # the loader above already samples (Poisson, secret generator)
                grad_sample_mode=grad_sample_mode,
                noise_generator=privacy_generator(_param_device(params, device), seeds[1]),
            )
        optimizer.secure_mode = True  # Opacus' noise robust to floating-point attacks (sum of 4 draws)
        if canaries is not None:
            _inject_before_noise(optimizer, params, canaries, q)
    else:  # no privacy claim: reproducible from the run seed
        torch.manual_seed(local.seed)
        generator = torch.Generator().manual_seed(local.seed)
        loader = DataLoader(dataset, batch_size=local.batch_size, shuffle=True, generator=generator)
    losses: list[float] = []
    steps = 0
    for _ in range(local.epochs):
        for batch, (xb, yb) in enumerate(loader):
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            if len(yb):
                loss = loss_fn(train_module(xb), yb)
                loss.backward()
                losses.append(float(loss.detach()))
                if not private and canaries is not None:  # audit only: a canary as one more example,
                    grads = {k: p.grad for k, p in params.items() if p.grad is not None}  # once an epoch
                    canaries.shuffled_step(grads, batch, len(loader), 1.0 / len(yb))
            else:  # Poisson sampling drew an empty batch: a noise-only step, no forward pass (layers
                # without an Opacus grad sampler, such as ConvTranspose3d or PReLU, fail on batch 0)
                _empty_per_sample_gradients(params)
            extra = _parameter_terms(params, anchor, proximal_mu, correction)
            optimizer.step()
            _apply(params, extra, local.lr)
            steps += 1
    history: list[tuple[float, float, int]] = []
    if engine is not None:
        history = [(float(s), float(r), int(k)) for s, r, k in engine.accountant.history]
        train_module.remove_hooks()
    return TrainOutcome(
        loss=float(np.mean(losses)) if losses else math.nan,
        num_examples=n,
        steps=steps,
        noise_multiplier=sigma,
        sample_rate=q,
        privacy_steps=history,
    )


def _inject_before_noise(
    optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter], canaries: CanaryInjection, q: float
) -> None:
    """Audit only (common/audit/canaries.py): the sampled canaries join each step's clipped sum, then
    Opacus adds its noise as always."""
    add_noise = optimizer.add_noise

    def with_canaries() -> None:
        canaries.step_gradient({k: p.summed_grad for k, p in params.items() if p.requires_grad}, q)
        add_noise()

    optimizer.add_noise = with_canaries


def _planned_steps_per_epoch(mechanism: Mechanism | None, n: int, local: LocalTraining) -> int:
    """The loader's steps per epoch, checked against the plan: the steps taken and accounted must be the
    steps (and q) the budget reserved."""
    if mechanism is None:
        raise PrivacyError("private training needs its planned mechanism (common.privacy.plan_mechanism)")
    per_epoch = steps_per_epoch(n, local.batch_size)
    if mechanism.steps != local.epochs * per_epoch or not math.isclose(
        mechanism.sample_rate, 1.0 / per_epoch
    ):
        raise PrivacyError(
            f"the planned mechanism ({mechanism.steps} steps at q = {mechanism.sample_rate:.4g}) does not "
            f"match the loader: {local.epochs} epoch(s) of {per_epoch} steps at q = {1.0 / per_epoch:.4g} "
            f"for {n} examples at batch size {local.batch_size}"
        )
    return per_epoch


def _param_device(params: Mapping[str, nn.Parameter], fallback: torch.device | str) -> torch.device:
    """Where the model's parameters (and so Opacus' noise) live."""
    first = next(iter(params.values()), None)
    return first.device if first is not None else torch.device(fallback)


def _empty_per_sample_gradients(params: Mapping[str, nn.Parameter]) -> None:
    """Per-sample gradients of an empty batch: the DP optimiser then adds noise alone and counts the step."""
    for p in params.values():
        if p.requires_grad:
            p.grad_sample = p.new_zeros((0, *p.shape))


@torch.no_grad()
def _parameter_terms(
    params: Mapping[str, nn.Parameter],
    anchor: Mapping[str, torch.Tensor] | None,
    proximal_mu: float,
    correction: Mapping[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """Gradient of the data-independent terms at the current weights: μ(w - w_start) + (c - c_i).

    They are not added to the loss: under Opacus the optimiser replaces `p.grad` by the clipped, noised
    sum of per-sample gradients, and a term that depends on the parameters alone has no per-sample
    gradient, so it would be dropped silently. Applied after the step with the same learning rate, the
    update equals plain SGD on loss + terms, with or without DP; as they use no data, they cost no privacy.
    With Adam it is a decoupled step, as AdamW's weight decay.
    """
    terms: dict[str, torch.Tensor] = {}
    if anchor is not None:
        terms = {k: proximal_mu * (p - anchor[k]) for k, p in params.items()}
    for k, c in (correction or {}).items():
        terms[k] = terms[k] + c if k in terms else c
    return terms


@torch.no_grad()
def _apply(params: Mapping[str, nn.Parameter], terms: Mapping[str, torch.Tensor], lr: float) -> None:
    """One SGD step along the precomputed terms."""
    for k, g in terms.items():
        params[k].sub_(lr * g)


@torch.no_grad()
def predict_proba(
    model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu", batch_size: int = 256
):
    """Class probabilities (n, k) and labels (n,) of `dataset`."""
    model.to(device).eval()
    probs, labels = [], []
    for xb, yb in DataLoader(dataset, batch_size=batch_size):
        probs.append(torch.softmax(model(xb.to(device)), dim=1).cpu())
        labels.append(yb)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()

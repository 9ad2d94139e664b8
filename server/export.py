"""Model export at the end of a run: `model.safetensors` (from `model.pt`), the model card, the signature."""

from __future__ import annotations

from pathlib import Path

import torch

from fedward.common.errors import ConfigError
from fedward.server.provenance.manifest import sign_run
from fedward.server.provenance.signing import load_private_key, resolve_signing_key
from fedward.server.provenance.software import package_version
from fedward.server.report.model_card import write_model_card
from fedward.server.rundir import RunDirectory

TORCH_WEIGHTS = "model.pt"
SAFETENSORS_WEIGHTS = "model.safetensors"


def load_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A saved state dict (tensors only, loaded without unpickling code); ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the run saves its final model there)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ConfigError(f"{path}: not a torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"{path}: expected a state dict of named tensors")
    return state


def export_weights(run_dir: Path) -> Path:
    """Write `<run>/model.safetensors` from `<run>/model.pt`, with task, model, fedward version and run
    name as metadata; returns its path."""
    from safetensors.torch import save_file  # only the export needs it

    folder = RunDirectory.existing(run_dir)
    run = folder.path
    state = load_torch_weights(run / TORCH_WEIGHTS)
    run_config = folder.run_config()
    metadata = {
        "format": "pt",
        "task": str(run_config.get("task", "")),
        "model": str(run_config.get("model", "")),
        "fedward-version": package_version("fedward") or "unknown",
        "run-name": run.name,
    }
    # safetensors refuses shared or strided storage: give every tensor its own contiguous copy
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    target = run / SAFETENSORS_WEIGHTS
    tmp = run / f".{SAFETENSORS_WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # like model.pt: weights are not secret (safetensors creates the file 0600)
    tmp.replace(target)
    return target


def load_exported(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of an exported `model.safetensors`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118


def finalise_run(run_dir: Path, signing_key: Path | None = None) -> None:
    """End of a run: export the weights to safetensors, write MODEL_CARD.md, sign the provenance manifest.

    `signing_key` as in `server.provenance.signing.resolve_signing_key` (else `$FEDWARD_SIGNING_KEY`, else the
    per-user key); it is resolved first, so a bad key path fails before anything is written.
    """
    key = resolve_signing_key(signing_key)
    load_private_key(key)  # mode and format checked before anything is written
    run = Path(run_dir).expanduser().resolve()
    export_weights(run)
    write_model_card(run)
    sign_run(run, key)

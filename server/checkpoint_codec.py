"""Server state as JSON plus named arrays, without pickle: the encoding inside a round checkpoint.

`encode(value)` turns a tree of plain values into JSON-able data and a dict of arrays (saved as
safetensors); `decode` reverses it exactly. Plain JSON (str, int, finite float, bool, None, lists, objects
whose keys are strings not starting with `$`) stands for itself; everything else is an object with one
`$`-tag:

    {"$float": "inf"|"-inf"|"nan"}   {"$tuple": [...]}   {"$set": [...]}   {"$dict": [[key, value], ...]}
    {"$array": NAME}  numpy array     {"$scalar": NAME}  numpy scalar (a 0-d array)
    {"$torch": NAME}  torch tensor    {"$dtype": "<f4"}  numpy dtype
    {"$arrays": {key: {"$array": NAME}}}                  Flower ArrayRecord
    {"$dataclass": "module:Qualname", "fields": {...}}     a dataclass of fedward's own packages

Decoding never imports or calls anything a file names except a dataclass defined in fedward's packages,
rebuilt field by field (its `__init__` is not run). Encoding a value of any other type raises
CheckpointError naming where it sits, so a strategy attribute of a new type fails loudly on the first
round rather than being dropped from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
from typing import Any

import numpy as np

from fedward.common.errors import FedwardError

DATACLASS_PACKAGES = ("fedward.server", "fedward.strategies", "fedward.common")
"""Packages whose dataclasses a checkpoint may hold (strategy state such as the update check's Reference)."""


def _in_fedward(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in DATACLASS_PACKAGES)


def _current_name(module: str) -> str:
    """A checkpoint from before the `fedward.` namespace names `common.x`: read it as `fedward.common.x`."""
    legacy = module.split(".")[0] in ("server", "strategies", "common")
    return f"fedward.{module}" if legacy else module


class CheckpointError(FedwardError):
    """A round checkpoint cannot be written, is not signed by the federation's key, or is malformed."""


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def _is_array_record(value: Any) -> bool:
    from flwr.app import ArrayRecord

    return isinstance(value, ArrayRecord)


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _store(self, array: np.ndarray) -> str:
        name = f"t{len(self.arrays)}"
        self.arrays[name] = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d
        return name

    def value(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, bool | str):
            return v
        if isinstance(v, np.generic):
            if v.dtype == object:
                raise CheckpointError(f"{where}: numpy object scalar cannot be saved")
            return {"$scalar": self._store(np.asarray(v))}
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v) if math.isfinite(v) else {"$float": repr(float(v))}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise CheckpointError(f"{where}: numpy array of Python objects cannot be saved")
            return {"$array": self._store(v)}
        if isinstance(v, np.dtype):
            return {"$dtype": v.str}
        if _is_torch_tensor(v):
            return {"$torch": self._store(v.detach().cpu().numpy())}
        if _is_array_record(v):
            return {"$arrays": {k: {"$array": self._store(a.numpy())} for k, a in v.items()}}
        if isinstance(v, tuple | list | set | frozenset):
            items = [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
            return items if isinstance(v, list) else {"$tuple" if isinstance(v, tuple) else "$set": items}
        if isinstance(v, dict):
            return self._dict(v, where)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return self._dataclass(v, where)
        raise CheckpointError(
            f"{where}: a {type(v).__module__}.{type(v).__qualname__} cannot be saved in a checkpoint "
            "(supported: JSON values, tuples, sets, dicts, numpy/torch arrays, ArrayRecord, fedward "
            "dataclasses)"
        )

    def _dict(self, v: dict, where: str) -> Any:
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: self.value(x, f"{where}[{k!r}]") for k, x in v.items()}
        return {
            "$dict": [[self.value(k, f"{where} key"), self.value(x, f"{where}[{k!r}]")] for k, x in v.items()]
        }

    def _dataclass(self, v: Any, where: str) -> Any:
        cls = type(v)
        if not _in_fedward(cls.__module__) or "<locals>" in cls.__qualname__:
            raise CheckpointError(f"{where}: dataclass {cls.__module__}.{cls.__qualname__} is not fedward's")
        fields = {f.name: self.value(getattr(v, f.name), f"{where}.{f.name}") for f in dataclasses.fields(v)}
        return {"$dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def encode(value: Any, where: str = "checkpoint") -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON-able data, arrays by name) for `value`; CheckpointError naming an unsupported value."""
    encoder = _Encoder()
    return encoder.value(value, where), encoder.arrays


def _dataclass_type(name: Any, where: str) -> type:
    module, _, qualname = str(name).partition(":")
    module = _current_name(module)
    if not _in_fedward(module) or not qualname:
        raise CheckpointError(f"{where}: dataclass {name!r} is not one of fedward's packages")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{where}: no dataclass {name!r} in this fedward ({exc})") from exc
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise CheckpointError(f"{where}: {name!r} is not a dataclass")
    return cls


class _Decoder:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def _array(self, name: Any, where: str) -> np.ndarray:
        if not isinstance(name, str) or name not in self.arrays:
            raise CheckpointError(f"{where}: array {name!r} is not in the checkpoint's arrays")
        return np.array(self.arrays[name], copy=True)  # writable, owned

    def value(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, bool | str | int | float):
            return v
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if not isinstance(v, dict):
            raise CheckpointError(f"{where}: unexpected JSON value {type(v).__name__}")
        tags = [k for k in v if k.startswith("$")]
        if not tags:
            return {k: self.value(x, f"{where}[{k!r}]") for k, x in v.items()}
        tag, body = tags[0], v[tags[0]]
        if tag == "$float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag in ("$tuple", "$set") and isinstance(body, list):
            items = [self.value(x, f"{where}[{i}]") for i, x in enumerate(body)]
            return tuple(items) if tag == "$tuple" else set(items)
        if tag == "$dict" and isinstance(body, list):
            if not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise CheckpointError(f"{where}: $dict entries must be [key, value] pairs")
            return {self.value(k, f"{where} key"): self.value(x, f"{where}[{k!r}]") for k, x in body}
        if tag == "$array":
            return self._array(body, where)
        if tag == "$scalar":
            return self._array(body, where)[()]
        if tag == "$torch":
            import torch

            return torch.from_numpy(self._array(body, where))
        if tag == "$dtype" and isinstance(body, str):
            try:
                return np.dtype(body)
            except TypeError as exc:
                raise CheckpointError(f"{where}: {body!r} is not a numpy dtype") from exc
        if tag == "$arrays" and isinstance(body, dict):
            from flwr.app import Array, ArrayRecord

            return ArrayRecord({k: Array(self.value(a, f"{where}[{k!r}]")) for k, a in body.items()})
        if tag == "$dataclass" and isinstance(v.get("fields"), dict):
            cls = _dataclass_type(body, where)
            names = {f.name for f in dataclasses.fields(cls)}
            if set(v["fields"]) != names:
                raise CheckpointError(
                    f"{where}: fields of {body} are {sorted(v['fields'])}, expected {sorted(names)}"
                )
            obj = object.__new__(cls)
            for key, x in v["fields"].items():
                object.__setattr__(obj, key, self.value(x, f"{where}.{key}"))
            return obj
        raise CheckpointError(f"{where}: unknown or malformed tag {tag!r}")


def decode(data: Any, arrays: dict[str, np.ndarray], where: str = "checkpoint") -> Any:
    """The value `encode` was given; CheckpointError naming a malformed part."""
    return _Decoder(arrays).value(data, where)

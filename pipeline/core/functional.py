"""``torch.func.functional_call`` made safe for models that reach one submodule by two paths or tie one tensor
into two modules.

torch's own call, given one value for a submodule reachable from several paths, swaps that submodule's slot once
per path and restores it from the already-swapped value, so the module keeps the substitute afterwards: a plain
tensor in place of the Parameter that W's optimiser holds (pytorch/pytorch#164759). Training would then go on
updating a tensor the model no longer reads, silently. Here each distinct slot (module object, attribute) is
swapped exactly once, and a tensor tied into several slots gets the value in each of them."""
from __future__ import annotations

from itertools import chain
from typing import Any, Mapping

from torch import Tensor, nn
from torch.func import functional_call


def slot_names(module: nn.Module) -> dict[int, list[str]]:
    """For each parameter and buffer (by id), the name of every distinct slot that holds it."""
    slots: dict[int, list[str]] = {}
    for prefix, owner in module.named_modules():  # each module object once, under its first path
        for attr, tensor in chain(owner._parameters.items(), owner._buffers.items()):
            if tensor is not None:
                slots.setdefault(id(tensor), []).append(f"{prefix}.{attr}" if prefix else attr)
    return slots


def call_with(module: nn.Module, values: Mapping[str, Tensor], args: Any = (), kwargs: dict | None = None) -> Any:
    """``module(*args, **kwargs)`` with the parameters and buffers named in ``values`` (names as
    ``named_parameters()`` / ``named_buffers()`` give them) replaced for this call only."""
    named = dict(chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)))
    unknown = [name for name in values if name not in named]
    if unknown:
        raise KeyError(f"call_with: {unknown} are not parameters or buffers of {type(module).__name__}")
    slots = slot_names(module)
    expanded = {slot: value for name, value in values.items() for slot in slots[id(named[name])]}
    return functional_call(module, expanded, args if isinstance(args, tuple) else (args,), kwargs, tie_weights=False)

"""Exponential moving average (EMA) of a model's weights, kept in a shadow copy for evaluation and saving."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["EMA"]


class EMA:
    """Shadow model whose floating-point parameters track ``decay·shadow + (1 − decay)·param``.

    The shadow is a deep copy of ``model`` in eval mode with gradients off. Buffers (batch-norm
    statistics, say) and non-floating parameters are copied as they are. ``decay == 0`` turns EMA off:
    after every :meth:`update` the shadow equals the model.

    Args:
        model: the model being trained; tensors are ``(B, C, H, W)`` in and out as usual.
        decay: in [0, 1).

    Raises:
        ConfigError: ``decay`` outside [0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"expected an EMA decay in [0, 1), got {decay}")
        self.decay = float(decay)
        self._shadow = copy.deepcopy(model)
        self._shadow.eval()
        self._shadow.requires_grad_(False)

    @property
    def shadow(self) -> torch.nn.Module:
        """The averaged model (eval mode, no gradients)."""
        return self._shadow

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the shadow one step towards ``model`` (same architecture as the one given at construction).

        Raises:
            ConfigError: ``model`` has parameters or buffers the shadow lacks, or vice versa.
        """
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        own_params = dict(self._shadow.named_parameters())
        own_buffers = dict(self._shadow.named_buffers())
        if params.keys() != own_params.keys() or buffers.keys() != own_buffers.keys():
            raise ConfigError("expected a model with the shadow's parameters and buffers, got a different one")
        for key, s in own_params.items():
            p = params[key].detach().to(s.device)
            if s.is_floating_point() and self.decay > 0.0:
                s.mul_(self.decay).add_(p.to(s.dtype), alpha=1.0 - self.decay)
            else:
                s.copy_(p)
        for key, b in own_buffers.items():
            b.copy_(buffers[key].detach())

    def state_dict(self) -> dict[str, Any]:
        """The shadow model's ``state_dict`` (the decay is a constructor argument, not saved)."""
        return self._shadow.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load weights saved by :meth:`state_dict` into the shadow (strict)."""
        self._shadow.load_state_dict(state)

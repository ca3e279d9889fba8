r"""GRU-D: a GRU that reads irregularly sampled series with missing values (Che et al. 2018,
"Recurrent Neural Networks for Multivariate Time Series with Missing Values").

Why a separate layer: a plain GRU needs every input filled in, and the usual fixes (carry the last
value forward, or put in the mean) throw away *how long ago* a variable was last seen. GRU-D keeps
three aligned inputs per step, all of shape (T, B, D):

* ``x``: the values, anything (NaN included) where a value is missing;
* ``mask`` :math:`m_t`: 1 where :math:`x_t^d` was observed, 0 where it is missing;
* ``delta`` :math:`\delta_t`: for every variable, the time since it was last observed
  (:func:`time_gaps` computes it from timestamps and the mask).

and learns two decays from :math:`\delta_t`. The equations, in torch's gate order r, z, n:

.. math::

    \gamma^x_t &= \exp(-\max(0,\ w_{\gamma x} \odot \delta_t + b_{\gamma x}))
        &&\text{(input decay, one rate per variable)} \\
    \gamma^h_t &= \exp(-\max(0,\ W_{\gamma h} \delta_t + b_{\gamma h}))
        &&\text{(hidden decay, a full } H \times D \text{ matrix)} \\
    \hat x_t &= m_t \odot x_t + (1 - m_t) \odot
        (\gamma^x_t \odot x^{last}_t + (1 - \gamma^x_t) \odot \bar x)
        &&\text{(decay from the last value towards the mean)} \\
    \hat h_{t-1} &= \gamma^h_t \odot h_{t-1} \\
    [a^r, a^z, a^n] &= W_{ih} \hat x_t + b_{ih} + V m_t \\
    [u^r, u^z, u^n] &= W_{hh} \hat h_{t-1} + b_{hh} \\
    r_t = \sigma(a^r + u^r), \quad z_t &= \sigma(a^z + u^z), \quad
        n_t = \tanh(a^n + r_t \odot u^n) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot \hat h_{t-1}

:math:`x^{last}_t` is the most recent observation of each variable strictly before step t
(:func:`last_observed`); where a variable has not been seen yet it is the mean :math:`\bar x`, so
the imputation starts at the mean. :math:`\bar x` is the empirical mean of the training data
(:meth:`GRUD.set_mean`); it defaults to zero, which is the mean of standardised data.

Where this differs from the paper's text, and why:

* The update gate has torch's meaning (``z`` keeps the old state). The paper writes
  :math:`h_t = (1 - z) \hat h + z \tilde h`; since :math:`1 - \sigma(a) = \sigma(-a)` the two are
  the same family of functions with the z-row signs flipped, and torch's form lets weights move
  to and from :class:`torch.nn.GRU` unchanged.
* ``reset_after=True`` (default) applies the reset gate after the recurrent product, as
  ``torch.nn.GRU`` and cuDNN do; ``reset_after=False`` gives the paper's (Cho et al.) form
  :math:`n_t = \tanh(a^n + W_{hn}(r_t \odot \hat h_{t-1}) + b_{hn})`.
* One layer, one direction: the paper's model is a single GRU-D layer, and stacking more layers
  on its output is an ordinary GRU's job (``lstmkit.GRU`` on the output sequence).

Parameter names follow ``torch.nn.GRU`` (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, rows r, z, n); the GRU-D additions are ``weight_mh_l0`` (V, 3H x D, rows r, z, n),
``weight_gamma_x``/``bias_gamma_x`` (D) and ``weight_gamma_h`` (H x D)/``bias_gamma_h`` (H), and
the buffer ``x_mean`` (D).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import _checks

__all__ = ["GRUD", "grud_inputs", "last_observed", "time_gaps"]


def _observed_mask(name: str, mask: Any, like: Tensor) -> Tensor:
    """Validate a 0/1 mask of ``like``'s shape and return it as a bool tensor."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of 0/1 or bools, got {_checks.describe(mask)}"
        )
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} must have the shape of x, {tuple(like.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name} must hold 0/1 or bools, got dtype {mask.dtype}")
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        value = mask[bad][0].item()
        raise ValueError(f"{name} must hold only 0 and 1 (1 = observed), got a value of {value}")
    return mask != 0


def _checked_values(x: Any, observed: Tensor) -> Tensor:
    """``x`` with missing entries set to 0 (they may hold NaN); observed entries must be finite."""
    bad = observed & ~torch.isfinite(x)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"x must be finite where mask is 1 (observed), got {x[index].item()} at index {index}"
        )
    return torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))


def last_observed(x: Tensor, mask: Tensor) -> Tensor:
    r"""The most recent observed value of every variable strictly before each step:
    :math:`x^{last}_t = x_{t'}` with :math:`t' = \max\{s < t : m_s = 1\}`, NaN where no such
    :math:`s` exists.

    ``x`` and ``mask`` are time-major (T, ...): any trailing shape, typically (T, B, D). Missing
    entries of ``x`` may hold anything, NaN included. Differentiable with respect to ``x``.
    """
    _checks.floating_tensor("x", x)
    observed = _observed_mask("mask", mask, x)
    if x.dim() < 1:
        raise ValueError("x must have a time dimension first, got a 0-d tensor")
    clean = _checked_values(x, observed)
    T = x.shape[0]
    steps = torch.arange(T, device=x.device).reshape((T,) + (1,) * (x.dim() - 1))
    # index of the last observation at or before t, -1 where none; shifted one step for "before t"
    upto = torch.where(observed, steps, torch.full_like(steps, -1)).cummax(dim=0).values
    before = torch.cat([torch.full_like(upto[:1], -1), upto[:-1]], dim=0)
    gathered = clean.gather(0, before.clamp(min=0))
    return torch.where(before >= 0, gathered, torch.full_like(gathered, math.nan))


def time_gaps(timestamps: Tensor, mask: Tensor) -> Tensor:
    r"""The paper's :math:`\delta_t^d`: time since variable d was last observed, as seen at step t.

    .. math::

        \delta_1^d = 0, \qquad
        \delta_t^d = s_t - s_{t-1} + \begin{cases} \delta_{t-1}^d & m_{t-1}^d = 0 \\
                                                   0 & m_{t-1}^d = 1 \end{cases}

    so the gap grows across a run of missing values and restarts after each observation.

    ``mask`` is time-major (T, B, D) (or (T, D) for one series); ``timestamps`` is (T,) shared
    by the batch or (T, B) per sequence, non-decreasing in time. Returns a tensor of ``mask``'s
    shape in the timestamps' floating dtype (float32 for integer timestamps).
    """
    if not isinstance(timestamps, torch.Tensor):
        raise TypeError(f"timestamps must be a torch.Tensor, got {_checks.describe(timestamps)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {_checks.describe(mask)}")
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must have shape (T, B, D) or (T, D), got {tuple(mask.shape)}")
    T = mask.shape[0]
    dtype = timestamps.dtype if timestamps.is_floating_point() else torch.get_default_dtype()
    observed = _observed_mask("mask", mask, torch.empty(mask.shape, device=mask.device))
    batch_shape = tuple(mask.shape[1:-1])  # () or (B,)
    if timestamps.dim() == 1 and timestamps.shape[0] == T:
        s = timestamps.to(dtype).reshape((T,) + (1,) * len(batch_shape))
    elif timestamps.dim() == 2 and tuple(timestamps.shape) == (T, *batch_shape):
        s = timestamps.to(dtype)
    else:
        shared = f"({T},)"
        per_sequence = f" or {(T, *batch_shape)}" if batch_shape else ""
        raise ValueError(
            f"timestamps must have shape {shared}{per_sequence} to match mask {tuple(mask.shape)}, "
            f"got {tuple(timestamps.shape)}"
        )
    if not bool(torch.isfinite(s).all()):
        raise ValueError("timestamps must be finite, got NaN or inf")
    step = s[1:] - s[:-1]
    if bool((step < 0).any()):
        t = int((step < 0).nonzero()[0][0]) + 1
        raise ValueError(
            f"timestamps must be non-decreasing in time, got a step back at index {t} "
            f"({s[t - 1].flatten()[0].item()} -> {s[t].flatten()[0].item()})"
        )
    delta = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    for t in range(1, T):
        gap = step[t - 1].unsqueeze(-1)
        delta[t] = gap + torch.where(observed[t - 1], torch.zeros_like(delta[t - 1]), delta[t - 1])
    return delta


def grud_inputs(
    x: Tensor, mask: Tensor, timestamps: Tensor, *, batch_first: bool = False
) -> tuple[Tensor, Tensor]:
    """``(delta, x_last)`` for a batch: :func:`time_gaps` and :func:`last_observed` in one call,
    accepting batch-first tensors like :class:`GRUD` does. ``timestamps`` is (T,) or, per
    sequence, (T, B) (``(B, T)`` when ``batch_first``)."""
    _checks.boolean("batch_first", batch_first)
    _checks.floating_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (T, B, D) or (B, T, D), got {tuple(x.shape)}")
    if batch_first:
        x = x.transpose(0, 1)
        if isinstance(mask, torch.Tensor):
            mask = mask.transpose(0, 1)
        if isinstance(timestamps, torch.Tensor) and timestamps.dim() == 2:
            timestamps = timestamps.transpose(0, 1)
    delta = time_gaps(timestamps, mask).to(x.dtype)
    x_last = last_observed(x, mask)
    if batch_first:
        return delta.transpose(0, 1), x_last.transpose(0, 1)
    return delta, x_last


class GRUD(nn.Module):
    """One GRU-D layer (see the module docstring for the equations).

    ``forward(x, mask, delta, hx=None, lengths=None)`` with x, mask and delta of shape (T, B, D)
    ((B, T, D) when ``batch_first``) returns ``(output, h_n)`` like :class:`torch.nn.GRU`: output
    (T, B, H), zero past each sequence's length, and h_n (1, B, H), the state at each sequence's
    last valid step.
    """

    x_mean: Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        batch_first: bool = False,
        bias: bool = True,
        reset_after: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.bias = _checks.boolean("bias", bias)
        self.reset_after = _checks.boolean("reset_after", reset_after)
        D, H = self.input_size, self.hidden_size
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * H, D, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * H, H, **kw))
        self.bias_ih_l0: nn.Parameter | None = None
        self.bias_hh_l0: nn.Parameter | None = None
        if self.bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(3 * H, **kw))
            self.bias_hh_l0 = nn.Parameter(torch.empty(3 * H, **kw))
        self.weight_mh_l0 = nn.Parameter(torch.empty(3 * H, D, **kw))
        self.weight_gamma_x = nn.Parameter(torch.empty(D, **kw))
        self.bias_gamma_x = nn.Parameter(torch.empty(D, **kw))
        self.weight_gamma_h = nn.Parameter(torch.empty(H, D, **kw))
        self.bias_gamma_h = nn.Parameter(torch.empty(H, **kw))
        self.register_buffer("x_mean", torch.zeros(D, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.GRU's initialisation, U(-1/sqrt(H), 1/sqrt(H)), for the GRU and mask
        weights. The decay weights start at a small positive U(0, 1/sqrt(H)) with zero biases, so
        that at initialisation every decay rate is >= 0 and longer gaps forget more, which is
        the direction the paper motivates, without any gap saturating the decay yet."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_mh_l0"):
            p = getattr(self, name)
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        nn.init.uniform_(self.weight_gamma_x, 0.0, bound)
        nn.init.uniform_(self.weight_gamma_h, 0.0, bound)
        nn.init.zeros_(self.bias_gamma_x)
        nn.init.zeros_(self.bias_gamma_h)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.batch_first:
            text += ", batch_first=True"
        if not self.bias:
            text += ", bias=False"
        if not self.reset_after:
            text += ", reset_after=False"
        return text

    @torch.no_grad()
    def set_mean(self, x: Tensor, mask: Tensor) -> Tensor:
        r"""Set :math:`\bar x` to the per-variable mean of the observed entries of training data
        ``x`` (any shape ending in D, missing entries may be NaN) and return it.

        The paper imputes towards the empirical mean because, after a long gap, the best guess
        without other information is the variable's typical value, not its last one."""
        _checks.floating_tensor("x", x)
        if x.dim() < 1 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must end in the input size {self.input_size}, got shape {tuple(x.shape)}"
            )
        observed = _observed_mask("mask", mask, x)
        clean = _checked_values(x, observed).reshape(-1, self.input_size)
        counts = observed.reshape(-1, self.input_size).sum(0)
        if bool((counts == 0).any()):
            never = [int(d) for d in (counts == 0).nonzero().flatten()]
            raise ValueError(
                f"mask must observe every variable at least once to estimate its mean, "
                f"variables {never} are never observed"
            )
        mean = clean.sum(0).to(torch.float64) / counts.to(torch.float64)
        self.x_mean.copy_(mean.to(self.x_mean.dtype))
        return self.x_mean.clone()

    def _time_major(self, x: Any, mask: Any, delta: Any) -> tuple[Tensor, Tensor, Tensor]:
        _checks.floating_tensor("x", x)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
            raise ValueError(
                f"x must have shape {layout} with D = input_size = {self.input_size}, "
                f"got {tuple(x.shape)}"
            )
        _checks.matches_parameters("x", x, self.weight_ih_l0)
        observed = _observed_mask("mask", mask, x)
        _checks.floating_tensor("delta", delta)
        if tuple(delta.shape) != tuple(x.shape):
            raise ValueError(
                f"delta must have the shape of x, {tuple(x.shape)}, got {tuple(delta.shape)}"
            )
        if delta.dtype != x.dtype:
            raise TypeError(f"delta must have x's dtype {x.dtype}, got {delta.dtype}")
        if not bool(torch.isfinite(delta).all()) or bool((delta < 0).any()):
            bad = (~torch.isfinite(delta)) | (delta < 0)
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"delta must hold finite time gaps >= 0, got {delta[index].item()} at index {index}"
            )
        if self.batch_first:
            x, observed, delta = x.transpose(0, 1), observed.transpose(0, 1), delta.transpose(0, 1)
        return x, observed, delta

    def _impute(self, x: Tensor, observed: Tensor, delta: Tensor) -> Tensor:
        x_last = last_observed(x, observed)
        x_last = torch.where(torch.isnan(x_last), self.x_mean.expand_as(x_last), x_last)
        gamma_x = torch.exp(-torch.relu(delta * self.weight_gamma_x + self.bias_gamma_x))
        fill = gamma_x * x_last + (1 - gamma_x) * self.x_mean
        return torch.where(observed, _checked_values(x, observed), fill)

    def impute(self, x: Tensor, mask: Tensor, delta: Tensor) -> Tensor:
        r""":math:`\hat x`, the input the GRU actually sees: observed values kept, missing ones
        decayed from the last observation towards the mean. Same layout as ``x``."""
        x_t, observed, delta_t = self._time_major(x, mask, delta)
        x_hat = self._impute(x_t, observed, delta_t)
        return x_hat.transpose(0, 1) if self.batch_first else x_hat

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        delta: Tensor,
        hx: Tensor | None = None,
        lengths: Any = None,
    ) -> tuple[Tensor, Tensor]:
        x_t, observed, delta_t = self._time_major(x, mask, delta)
        T, B, _ = x_t.shape
        H = self.hidden_size
        h = x_t.new_zeros(B, H) if hx is None else _checks.state_tensor("hx", hx, (1, B, H), x_t)[0]
        valid = None
        if lengths is not None:
            steps = _checks.lengths_tensor(lengths, T, B, x_t.device)
            valid = (torch.arange(T, device=x_t.device).unsqueeze(1) < steps).unsqueeze(-1)

        x_hat = self._impute(x_t, observed, delta_t)
        m = observed.to(x_t.dtype)
        # everything that does not depend on h is computed for all steps at once
        gi = x_hat @ self.weight_ih_l0.T + m @ self.weight_mh_l0.T
        if self.bias_ih_l0 is not None:
            gi = gi + self.bias_ih_l0
        gamma_h = torch.exp(-torch.relu(delta_t @ self.weight_gamma_h.T + self.bias_gamma_h))
        w_hh = self.weight_hh_l0
        b_hh = self.bias_hh_l0
        outputs = []
        for t in range(T):
            h_dec = gamma_h[t] * h
            a_r, a_z, a_n = gi[t].chunk(3, dim=-1)
            if self.reset_after:
                u = h_dec @ w_hh.T
                if b_hh is not None:
                    u = u + b_hh
                u_r, u_z, u_n = u.chunk(3, dim=-1)
                r = torch.sigmoid(a_r + u_r)
                z = torch.sigmoid(a_z + u_z)
                n = torch.tanh(a_n + r * u_n)
            else:
                u_rz = h_dec @ w_hh[: 2 * H].T
                if b_hh is not None:
                    u_rz = u_rz + b_hh[: 2 * H]
                u_r, u_z = u_rz.chunk(2, dim=-1)
                r = torch.sigmoid(a_r + u_r)
                z = torch.sigmoid(a_z + u_z)
                u_n = (r * h_dec) @ w_hh[2 * H :].T
                if b_hh is not None:
                    u_n = u_n + b_hh[2 * H :]
                n = torch.tanh(a_n + u_n)
            h_new = (1 - z) * n + z * h_dec
            if valid is not None:
                # past a sequence's end its state is frozen (no decay either) and its output is 0
                h_new = torch.where(valid[t], h_new, h)
                outputs.append(torch.where(valid[t], h_new, torch.zeros_like(h_new)))
            else:
                outputs.append(h_new)
            h = h_new
        output = torch.stack(outputs) if T else x_t.new_zeros(0, B, H)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h.unsqueeze(0)

"""Nash-MTL weights from the shared representation, at the cost of one backward
(docs/formulas.md#nash-representation).

The exact reference (``--nash-gradients parameters``) needs one backward per task through every
layer a task reaches: L_ABT's reaches from the Barlow-Twins layer c down to layer 0, a second
backward through most of the model. Here the model is cut at the residual stream x_c entering
layer c (the block input; ``HeadTap(block_inputs=...)``). Every trainable parameter below c
reaches every loss only through x_c — CE through the residual stream and the attention of layer
c, L_ABT through the head outputs z_c = Attn_c(x_c) it reads, L_LDB not at all (it is a function
of the o_proj weights of layers ≥ c). So, per task k:

* a_k: its exact gradient on the parameters of layers ≥ c (autograd.grad from the loss to x_c
  and those parameters: CE's backward from the loss to layer c, L_ABT's through one attention
  block, L_LDB's through the weights only);
* δ_k = ∂L_k/∂x_c, the gradient at the cut (0 for L_LDB);
* its gradient below c is b_k = Jᵀ δ_k, J = ∂x_c/∂θ_below, never formed per task.

The Gram is M̃_ij = ⟨a_i, a_j⟩ + √(s_i s_j)·⟨δ_i, δ_j⟩: exact above the cut (including L_LDB's
inner products with CE on the o_proj adapters, and CE–L_ABT on the q/k/v adapters of layer c), and
below it the representation inner product, as MGDA-UB uses (Sener & Koltun 2018), scaled by each
task's backward gain s_k ≈ ‖b_k‖² / ‖δ_k‖². Without the gains the two parts would be in different
units (parameter gradients summed over tokens against per-token activation gradients), and α
would weigh the layers above c against those below at an arbitrary ratio. The gains differ by
task (on SmolLM2 CE's is about twice L_ABT's) and drift, so they are tracked in two parts: a
calibration step (the first step with L_ABT, then after every ``--nash-calibrate-every``
representation steps) computes every b_k exactly (one more backward per task), takes the exact
α and records each task's gain as a ratio q_k to the gain of the direction it took; every other
step uses s_k = q_k·s, with s = ‖Jᵀv‖² / ‖v‖² measured on the previous step's direction v (free:
it is the norm of the one backward's result).

Then α solves M̃α = 1/α (game/nash_mtl.py), and **one** backward from x_c with v = Σ_k α_k δ_k
gives Σ_k α_k b_k exactly, so the update Σ_k α_k (a_k + b_k) uses the exact task gradients; only
α is approximate. With gradient accumulation the graphs below the cut of all micro-batches are
kept until the step ends (the memory of one large batch). ``exact=True`` (``--nash-log-exact``)
also computes every b_k to log the exact α beside the applied one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from headgame.errors import HeadgameError
from headgame.game.nash_mtl import NashResult, solve_nash_weights
from headgame.train.lora import ParamGroups
from headgame.train.terms import Task


def representation_cut(abt_layers: list[int], tap_layers: list[int]) -> int:
    """The layer whose block input is the cut: the single Barlow-Twins layer, at or below every
    other game layer (their ρ must come from CE's backward above the cut)."""
    if len(abt_layers) != 1 or min(tap_layers) < abt_layers[0]:
        raise HeadgameError(
            f"--nash-gradients representation needs one Barlow-Twins layer at or below every other game layer "
            f"(got --abt-layers {','.join(map(str, abt_layers))}, game layers {','.join(map(str, tap_layers))}); "
            "use --nash-gradients parameters for this layout")
    return abt_layers[0]


class RepresentationNash:
    """The per-step work of representation-space Nash-MTL at the block input of layer ``cut``."""

    def __init__(self, groups: ParamGroups, cut: int, *, flat: Callable[[list, list[int]], Tensor],
                 mean_across: Callable[[Tensor], Tensor], sum_across: Callable[[Tensor], Tensor], world: int = 1) -> None:
        self.groups, self.cut, self.world = groups, cut, world
        self._flat, self._mean, self._sum = flat, mean_across, sum_across
        below = {i for l in range(cut) for i in groups.by_layer[l]}
        self.below = sorted(below)
        self.above = [i for i in range(len(groups.params)) if i not in below]
        self.state = {"gain": None, "ratios": {}, "since": 0}  # s of the last step, q_k, steps since calibration
        self.exact = self.calibrating = False

    @property
    def gain(self) -> float | None:
        return self.state["gain"]

    @gain.setter
    def gain(self, value: float | None) -> None:
        self.state["gain"] = value

    def begin(self, *, log_exact: bool, calibrate_every: int = 0) -> None:
        st = self.state
        self.calibrating = st["gain"] is None or (calibrate_every > 0 and st["since"] >= calibrate_every)
        self.exact = log_exact or self.calibrating
        self._above: dict[str, Tensor] = {}
        self._below: dict[str, Tensor] = {}
        self._xgram: Tensor | None = None
        self._micro: list[tuple[Tensor | None, list[Tensor]]] = []

    def micro_batch(self, tasks: list[Task], x: Tensor | None, *, before_ce: Callable[[], None],
                    after_ce: Callable[[], None]) -> None:
        """Each task's gradient above the cut and at it (``x``: the graph-connected block input,
        None when nothing below the cut is trainable). ``before_ce``/``after_ce`` switch the
        tap's ρ capture on around CE's backward only."""
        params = self.groups.params
        reach_x = x is not None and x.requires_grad
        deltas = []
        for task in tasks:
            reach = set(task.indices) if task.indices is not None else set(range(len(params)))
            idx = [i for i in self.above if i in reach]
            wrt = ([x] if reach_x else []) + [params[i] for i in idx]
            if task.name == "ce":
                before_ce()
            grads = torch.autograd.grad(task.loss, wrt, retain_graph=True, allow_unused=True) if wrt else ()
            if task.name == "ce":
                after_ce()
            delta = grads[0] if reach_x and grads[0] is not None else None  # None: the task does not reach x (L_LDB)
            above = self._flat(list(grads[1:] if reach_x else grads), idx)
            self._above[task.name] = self._above[task.name] + above if task.name in self._above else above
            deltas.append(torch.zeros_like(x) if reach_x and delta is None else delta)
            if self.exact:
                below = self._below_grad(x, delta, retain=True)  # no backward for a task that does not reach x
                self._below[task.name] = self._below[task.name] + below if task.name in self._below else below
        if reach_x:
            d = torch.stack([dl.reshape(-1).double() for dl in deltas])  # [K, B·T·d]
            gram = d @ d.T
            self._xgram = gram if self._xgram is None else self._xgram + gram
        self._micro.append((x if reach_x else None, deltas))

    def _below_grad(self, x: Tensor | None, v: Tensor | None, *, retain: bool) -> Tensor:
        """Jᵀ v on the parameters below the cut, flattened (zeros when nothing is below)."""
        if x is None or v is None or not self.below:
            return self._flat([], [])
        grads = torch.autograd.grad(x, [self.groups.params[i] for i in self.below], grad_outputs=v,
                                    retain_graph=retain, allow_unused=True)
        return self._flat(list(grads), self.below)

    def finish(self, names: list[str]) -> tuple[Tensor, NashResult, dict]:
        """(the update Σ α_k g_k, the solve, log entries) for the tasks ``names`` (CE first)."""
        k, st = len(names), self.state
        a = torch.stack([self._mean(self._above[n]) for n in names])  # [K, P], zero below the cut
        xgram = torch.zeros(k, k, dtype=torch.float64) if self._xgram is None else self._sum(self._xgram.clone()).cpu()
        xgram = xgram / self.world**2  # the loss is the mean over processes: δ of each is 1/W of its own
        cut_sq = torch.diagonal(xgram).clamp_min(0)
        log: dict = {}
        if self.exact:
            b = torch.stack([self._mean(self._below[n]) for n in names])
            below_gram = b.double() @ b.double().T
            exact = _solve(a.double() @ a.double().T + below_gram)  # a and b have disjoint supports
            log["nash_alpha_exact"] = dict(zip(names, map(float, exact.alpha)))
            # the three K×K pieces (above the cut, at it, below it exactly): other approximations
            # of the below-cut Gram can be scored offline on the same batches
            log["nash_grams"] = {"above": (a.double() @ a.double().T).tolist(), "cut": xgram.tolist(), "below": below_gram.tolist()}
        if self.calibrating:  # exact α; per-task gains s_k = ‖b_k‖²/‖δ_k‖² as ratios q_k to the gain of α's direction
            res = exact
            alpha = torch.as_tensor(res.alpha, dtype=a.dtype, device=a.device)
            below = (alpha[:, None] * b).sum(0)
            task_gain = torch.where(cut_sq > 0, torch.diagonal(below_gram) / torch.where(cut_sq > 0, cut_sq, 1), 0)
            combined = _gain(below, res.alpha, xgram)
            st["ratios"] = {n: float(task_gain[j]) / combined for j, n in enumerate(names)} if combined else {}
            st["since"] = 0
            log["nash_calibration"] = True
        else:
            gains = torch.tensor([st["ratios"].get(n, 0.0) * st["gain"] for n in names], dtype=torch.float64)
            res = _solve(a.double() @ a.double().T + torch.sqrt(torch.outer(gains, gains)) * xgram)
            alpha = torch.as_tensor(res.alpha, dtype=a.dtype, device=a.device)
            below = self._flat([], [])  # the one backward below the cut, with v = Σ α_k δ_k
            for x, deltas in self._micro:
                if x is not None:
                    v = sum(float(alpha[j]) * d for j, d in enumerate(deltas))
                    below = below + self._below_grad(x, v, retain=False)
            below = self._mean(below)
            combined = _gain(below, res.alpha, xgram)
            st["since"] += 1
            log["nash_gains"] = dict(zip(names, gains.tolist()))
        if combined:
            st["gain"] = combined
        self._micro = []
        return (alpha[:, None] * a).sum(0) + below, res, log


def _gain(below: Tensor, alpha: np.ndarray, xgram: Tensor) -> float | None:
    """‖Jᵀv‖² / ‖v‖² for v = Σ α_k δ_k (None when v = 0, e.g. nothing trainable below the cut)."""
    v_sq = float(alpha @ xgram.numpy() @ alpha)
    return float(below.double().pow(2).sum()) / v_sq if v_sq > 0 else None


def _solve(gram: Tensor) -> NashResult:
    if gram.shape[0] == 1:  # one task: its plain gradient (as nash_update)
        return NashResult(np.ones(1), 0, 0.0)
    return solve_nash_weights(gram)

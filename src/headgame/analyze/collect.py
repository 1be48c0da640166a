"""The per-batch work of analyze, shared by every command that measures G.

:class:`CouplingCollector` runs forward + activation-only backward with a :class:`HeadTap`
feeding streaming accumulators (gradient Gram for ρ, output moments for redundancy);
:func:`analyse_layer` turns them into every per-layer statistic (docs/formulas.md §G).
"""

from __future__ import annotations

from typing import Any

import torch

from headgame.errors import HeadgameError
from headgame.game.coalitions import find_coalitions, selective_coordination
from headgame.game.coupling import GradientGram, gamma, interaction_matrix, poa_proxy, weight_coupling
from headgame.game.losses import log_det_barrier
from headgame.game.redundancy import OutputMoments, cross_correlation, redundancy_stats
from headgame.models.layout import HeadLayout, unwrap_peft
from headgame.models.objective import Objective
from headgame.models.surgery import pruning_record
from headgame.models.tap import HeadTap, activation_gradients


class CouplingCollector:
    """The per-batch work of analyze: forward + backward with taps, streaming accumulation.

    Use as a context manager (it freezes the weights and makes activations the only gradient
    target), then call :meth:`step` per batch and :meth:`layer_results` at the end.
    """

    def __init__(self, model, layout: HeadLayout, objective: Objective, layers: list[int], *, redundancy: bool) -> None:
        self.model, self.layout, self.objective, self.layers = model, layout, objective, layers
        # an unevenly pruned layer has fewer query heads than the config names: each its own game
        self.n_heads = {l: layout.heads_in(model, l) for l in layers}
        self.grams = {l: self._gram(l) for l in layers}
        self.moments = {l: self._moments(l) for l in layers} if redundancy else {}
        self.n_batches = 0
        self.n_targets = 0
        self._omega: dict[int, torch.Tensor] | None = None
        self.loss_sum = 0.0
        self._scope = activation_gradients(model)
        self._tap = HeadTap(
            model, layout, layers,
            on_grad=lambda l, g: self.grams[l].update(g),
            on_output=(lambda l, o: self.moments[l].update(o)) if redundancy else None,
            per_layer_heads=True,
        )

    def _gram(self, layer: int) -> GradientGram:
        return GradientGram(self.n_heads[layer], self.layout.head_dim)

    def _moments(self, layer: int) -> OutputMoments:
        return OutputMoments(self.n_heads[layer], self.layout.head_dim)

    def __enter__(self) -> "CouplingCollector":
        self._scope.__enter__()
        try:
            self._tap.__enter__()
        except BaseException:
            self._scope.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._tap.__exit__(*exc)
        self._scope.__exit__(*exc)
        return False

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> float:
        """One batch: forward, loss, backward (the hooks accumulate). Returns the mean loss."""
        self._tap.set_mask(attention_mask)
        out = self.objective(input_ids, attention_mask)
        if not torch.isfinite(out.loss):
            raise HeadgameError(
                f"non-finite activations at batch {self.n_batches} (loss = {out.loss.item()}); "
                "run in --dtype float32 or check the model weights"
            )
        out.loss.backward()
        self.n_batches += 1
        self.n_targets += out.n_targets
        loss = out.loss.item()
        self.loss_sum += loss
        return loss / max(out.n_targets, 1)

    def running_gamma(self) -> float:
        """Mean Γ over layers from the statistics so far (for the progress bar)."""
        if self._omega is None:  # the weights are frozen during analyze: ω is computed once
            with torch.no_grad():
                self._omega = {l: weight_coupling(self.layout.head_slices(self.model, l).detach().double()) for l in self.layers}
        vals = [gamma(interaction_matrix(self._omega[l], self.grams[l].rho()))["gamma"] for l in self.layers if self.grams[l].n_tokens]
        return sum(vals) / len(vals) if vals else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_batches": self.n_batches, "n_targets": self.n_targets, "loss_sum": self.loss_sum,
            "grams": {l: g.state_dict() for l, g in self.grams.items()},
            "moments": {l: m.state_dict() for l, m in self.moments.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_batches, self.n_targets, self.loss_sum = state["n_batches"], state["n_targets"], state["loss_sum"]
        for l, s in state["grams"].items():
            self.grams[l].load_state_dict(s)
        for l, s in state["moments"].items():
            self.moments[l].load_state_dict(s)

    def gather(self) -> None:
        """Fold the accumulators of every process (headgame.dist) into this one, in rank order:
        the Gram sums, token and target counts and loss sums add; the output moments merge
        exactly (Chan's formula). Nothing to do on one process."""
        from headgame.dist import all_gather

        states = all_gather(self.state_dict())
        if len(states) == 1:
            return
        self.n_batches = sum(s["n_batches"] for s in states)
        self.n_targets = sum(s["n_targets"] for s in states)
        self.loss_sum = sum(s["loss_sum"] for s in states)
        for accs, key, make in ((self.grams, "grams", self._gram), (self.moments, "moments", self._moments)):
            for l in list(accs):
                accs[l] = make(l)
                for s in states:
                    part = make(l)
                    part.load_state_dict(s[key][l])
                    accs[l].merge(part)

    def layer_results(self, seed: int = 0) -> list[dict[str, Any]]:
        """Every layer's statistics, computed on the CPU in float64 from copies of the accumulators
        (which stay on the model's device during the run)."""
        rec = pruning_record(unwrap_peft(self.model))
        results = []
        for l in self.layers:
            res = analyse_layer(
                layer=l,
                w_o=self.layout.head_slices(self.model, l).detach().cpu(),
                gram=_on_cpu(self.grams[l], self._gram(l)),
                moments=_on_cpu(self.moments[l], self._moments(l)) if l in self.moments else None,
                seed=seed,
            )
            if rec is not None:  # row i of G is the unpruned model's head heads[i]
                res["heads"] = rec.kept(l)
            results.append(res)
        return results


def _on_cpu(acc: Any, empty: Any) -> Any:
    """A CPU copy of an accumulator (its state dict is written on the CPU)."""
    empty.load_state_dict(acc.state_dict())
    return empty


def analyse_layer(*, layer: int, w_o: torch.Tensor, gram: GradientGram, moments: OutputMoments | None, seed: int = 0) -> dict[str, Any]:
    """All per-layer statistics from ω's weights and the accumulated ρ / moments (pure)."""
    omega = weight_coupling(w_o.double())  # docs/formulas.md#omega
    rho = gram.rho()  # §3.2
    g = interaction_matrix(omega, rho)  # §3.3
    if not torch.isfinite(g).all():
        raise HeadgameError(f"non-finite activations or gradients in layer {layer}; run in --dtype float32 or check the model weights")
    n_heads = g.shape[0]
    gam = gamma(g)  # §3.4
    res: dict[str, Any] = {
        "layer": layer,
        "n_tokens": gram.n_tokens,
        "G": g.tolist(),
        "omega": omega.tolist(),
        "rho": rho.tolist(),
        **gam,
        "ldb": float(log_det_barrier(g)),  # §4.1, the barrier's value at this G
        "poa_proxy": poa_proxy(gam["gamma"], n_heads),  # §3.5: a proxy, not the bound
    }
    coal = find_coalitions(g.numpy(), seed=seed)  # §9.2
    res["coalitions"] = coal
    res["selective_coordination"] = selective_coordination(g.numpy(), coal["labels"])
    if moments is not None and moments.n >= 2:
        stats = redundancy_stats(cross_correlation(moments), g)  # §4.2
        res["redundancy"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items()}
    return res


def summarise(layers: list[dict[str, Any]]) -> dict[str, Any]:
    gammas = [l["gamma"] for l in layers]
    i_max = max(range(len(gammas)), key=gammas.__getitem__)
    i_min = min(range(len(gammas)), key=gammas.__getitem__)
    return {
        "gamma_mean": sum(gammas) / len(gammas),
        "gamma_max": gammas[i_max], "gamma_max_layer": layers[i_max]["layer"],
        "gamma_min": gammas[i_min], "gamma_min_layer": layers[i_min]["layer"],
    }

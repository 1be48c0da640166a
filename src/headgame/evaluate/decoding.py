"""Decoding methods: how hidden states become next-token log-probabilities (docs/formulas.md#decoding).

Each method is a plug-in of the scorer, used identically for log-likelihood scoring and greedy
generation: the scorer hands it :class:`PositionStates` (hidden states at the positions being
predicted) and it returns ``[N, V]`` log-scores. Registered methods:

``greedy``
    the model's own distribution, ``log_softmax(z)``.
``cad`` — context-aware decoding (Shi et al., NAACL 2024)
    ``log_softmax((1 + α)·z(y | c, x) − α·z(y | x))`` with α = 0.5; the context-free view drops
    the request's evidence span (``cad_span``). Requests without a span are scored plainly.
``dola`` — decoding by contrasting layers (Chuang et al., ICLR 2024)
    premature layer M = argmax over candidate layers of JSD(q_N ‖ q_M) (per position);
    ``F = log_softmax(log q_N − log q_M)`` on the plausible set
    V_head = {v : q_N(v) ≥ 0.1·max q_N}, and the floor −1000 elsewhere (the reference
    implementation's ``relative_top_value``). Candidate layers: ``low`` = even layers in
    [0, N/2) (from 2 when the embeddings are tied; layer 0 alone if that leaves none), ``high`` =
    even layers in [N/2, N).
``actdec`` — activation decoding (Chen et al., ICML 2024)
    in-context sharpness: at the info layer l, for every token v the early-exit logits
    z_j(v) over the positions j ≤ t of the sequence are turned into a distribution over positions
    (softmax over j), whose entropy E_t(v) is low when v is sharply supported by the context;
    ``log p̃(v) = log_softmax(log q_N(v) − α·E_t(v))`` on the plausible set (as DoLa), −1000
    elsewhere. Defaults follow the released code's 7B setting (info layer 26 of 32, α = 0.5),
    scaled to the model depth: l = round(0.8125·N). Positions are causal (j ≤ t, prompt and
    answer so far), so scoring an answer never looks at its own future tokens.

Rolling log-likelihood (WikiText, GSM8K perplexity) needs a distribution over the whole
vocabulary (a floor of −1000 nats would swamp any perplexity). DoLa: the plausible set keeps
its final-layer mass q_N(V_head), shared out within it by the contrast log q_N − log q_M, and
every other token keeps q_N (:func:`dola_proper`); a log_softmax of the contrast over the
whole vocabulary would hand most of the mass to tokens the premature layer rules out, whatever
their plausibility. ActDec: ``log_softmax(log q_N − α·E)`` (E is bounded by log T, so the
reweighting stays mild).

Early-exit logits (DoLa, ActDec) apply the model's final norm and LM head to an intermediate
hidden state (``hidden_states`` index: 0 = embeddings, N = final).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from headgame.errors import HeadgameError
from headgame.evaluate.forward import ModelParts
from headgame.registry import Registry

FLOOR = -1000.0  # score of implausible tokens (DoLa's relative_top_value)


@dataclass
class PositionStates:
    """What a method sees for N predicted positions."""

    views: list[torch.Tensor]  # per view: [N, d] final (normalised) hidden states; view 0 = full prompt
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # hidden_states index -> [N, d]
    sharpness: torch.Tensor | None = None  # [N, V] ActDec entropies E_t(v)


class DecodingMethod:
    """Base class: plain greedy decoding."""

    name: ClassVar[str] = "greedy"
    n_views: ClassVar[int] = 1

    def hidden_layers(self, n_layers: int) -> tuple[int, ...]:
        return ()

    def info_layer(self, n_layers: int) -> int | None:
        return None

    def logprobs(self, parts: ModelParts, states: PositionStates, *, proper: bool = False) -> torch.Tensor:
        """``proper``: a normalised distribution over the whole vocabulary (no plausibility
        floor), used for rolling log-likelihood, where a floor would make perplexity meaningless."""
        return F.log_softmax(parts.logits(states.views[0]), dim=-1)

    def describe(self) -> dict:
        return {"name": self.name}


DECODING: Registry[type[DecodingMethod]] = Registry("decoding method", "--decoding")
DECODING.register("greedy")(DecodingMethod)


def plausible_mask(logq: torch.Tensor, relative_top: float) -> torch.Tensor:
    """True where q(v) ≥ relative_top · max q (DoLa's adaptive plausibility constraint)."""
    if relative_top <= 0:
        return torch.ones_like(logq, dtype=torch.bool)
    return logq >= logq.max(dim=-1, keepdim=True).values + math.log(relative_top)


@DECODING.register("cad")
@dataclass
class ContextAwareDecoding(DecodingMethod):
    alpha: float = 0.5
    name: ClassVar[str] = "cad"
    n_views: ClassVar[int] = 2

    def logprobs(self, parts: ModelParts, states: PositionStates, *, proper: bool = False) -> torch.Tensor:
        with_ctx = parts.logits(states.views[0])
        without = parts.logits(states.views[1])
        return F.log_softmax((1 + self.alpha) * with_ctx - self.alpha * without, dim=-1)

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "context": "the task's evidence span (cad_span)"}


def dola_candidates(n_layers: int, spec: str | tuple[int, ...], tied: bool) -> tuple[int, ...]:
    if isinstance(spec, tuple):
        layers = spec
    elif spec == "low":  # a shallow model with tied embeddings may leave only layer 0
        layers = tuple(range(2 if tied else 0, n_layers // 2, 2)) or (0,)
    elif spec == "high":
        layers = tuple(range(n_layers // 2, n_layers, 2))
    else:
        try:
            layers = tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise HeadgameError(f"--dola-layers '{spec}' is not understood; use low, high or a list like 2,4,6") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if not layers or bad:
        raise HeadgameError(
            f"DoLa candidate layers {list(layers)} are invalid for a {n_layers}-layer model; "
            f"use low, high or hidden-state indices in 0..{n_layers - 1}"
        )
    return layers


def jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence between distributions given as log-probs (last axis)."""
    m = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2.0)
    return 0.5 * ((logp.exp() * (logp - m)).sum(-1) + (logq.exp() * (logq - m)).sum(-1))


def dola_proper(final: torch.Tensor, premature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DoLa as a distribution over the whole vocabulary, for perplexity.

    The plausible set keeps the probability mass the final layer gives it, shared out by the
    contrast log q_N − log q_M; every other token keeps its final-layer probability. Plain
    log_softmax of the contrast over all tokens is not usable: a token the premature layer
    all but rules out gets a huge boost, however implausible it is.
    """
    neg = torch.full_like(final, -math.inf)
    head_mass = torch.logsumexp(torch.where(mask, final, neg), dim=-1, keepdim=True)  # log q_N(V_head)
    shared = F.log_softmax(torch.where(mask, final - premature, neg), dim=-1)  # contrast within V_head
    return torch.where(mask, head_mass + shared, final)


@DECODING.register("dola")
@dataclass
class DoLa(DecodingMethod):
    layers: str = "low"
    relative_top: float = 0.1
    tied_embeddings: bool = True
    name: ClassVar[str] = "dola"
    chunk: ClassVar[int] = 64  # positions per pass: keeps the [C, n, V] early-exit tensor small

    def hidden_layers(self, n_layers: int) -> tuple[int, ...]:
        return dola_candidates(n_layers, self.layers, self.tied_embeddings)

    def logprobs(self, parts: ModelParts, states: PositionStates, *, proper: bool = False) -> torch.Tensor:
        n = states.views[0].shape[0]
        if n > self.chunk:
            return torch.cat([
                self.logprobs(parts, PositionStates([v[i:i + self.chunk] for v in states.views],
                                                    {l: h[i:i + self.chunk] for l, h in states.layers.items()}), proper=proper)
                for i in range(0, n, self.chunk)
            ])
        final = F.log_softmax(parts.logits(states.views[0]), dim=-1)  # [N, V]
        cands = sorted(states.layers)
        early = torch.stack([F.log_softmax(parts.logits(states.layers[l], l), dim=-1) for l in cands])  # [C, N, V]
        div = jsd(final.unsqueeze(0).expand_as(early), early)  # [C, N]
        pick = div.argmax(dim=0)  # [N]
        premature = early[pick, torch.arange(final.shape[0], device=final.device)]  # [N, V]
        mask = plausible_mask(final, self.relative_top)
        if proper:
            return dola_proper(final, premature, mask)
        contrast = F.log_softmax(final - premature, dim=-1)
        return torch.where(mask, contrast, torch.full_like(contrast, FLOOR))

    def describe(self) -> dict:
        return {"name": self.name, "candidate_layers": self.layers, "relative_top": self.relative_top,
                "post_softmax": True, "floor": FLOOR}


class Sharpness:
    """Streaming entropy over positions of softmax_j z_j(v), for every vocabulary entry v.

    Keeps LSE = log Σ_j e^{z_j} and B = log Σ_j e^{z_j}(z_j + C) in float64 (C shifts the
    logits positive so B is a log of a positive sum); then the softmax-weighted mean logit is
    e^{B − LSE} − C and the entropy is H = LSE − z̄.
    """

    SHIFT = 1e4

    def __init__(self, vocab: int, batch: tuple[int, ...] = (), device: "torch.device | str | None" = None) -> None:
        self.lse = torch.full((*batch, vocab), -math.inf, dtype=torch.float64, device=device)
        self.b = torch.full((*batch, vocab), -math.inf, dtype=torch.float64, device=device)

    def copy(self) -> "Sharpness":
        new = Sharpness.__new__(Sharpness)
        new.lse, new.b = self.lse.clone(), self.b.clone()
        return new

    @classmethod
    def stack(cls, states: list["Sharpness"]) -> "Sharpness":
        new = cls.__new__(cls)
        new.lse = torch.stack([s.lse for s in states])
        new.b = torch.stack([s.b for s in states])
        return new

    def update(self, z: torch.Tensor) -> torch.Tensor:
        """Add positions ``z`` [n, V] (in order); return H after each of them, [n, V] float32."""
        z = z.double()
        lse = torch.logaddexp(self.lse, torch.logcumsumexp(z, dim=0))
        b = torch.logaddexp(self.b, torch.logcumsumexp(z + torch.log(z + self.SHIFT), dim=0))
        self.lse, self.b = lse[-1].clone(), b[-1].clone()
        return (lse - (torch.exp(b - lse) - self.SHIFT)).float()

    def step(self, z: torch.Tensor) -> torch.Tensor:
        """Batched single-position update: ``z`` [R, V]; state shaped [R, V]."""
        z = z.double()
        self.lse = torch.logaddexp(self.lse, z)
        self.b = torch.logaddexp(self.b, z + torch.log(z + self.SHIFT))
        return (self.lse - (torch.exp(self.b - self.lse) - self.SHIFT)).float()


def feed_sharpness(parts: ModelParts, state: Sharpness, info: torch.Tensor, layer: int,
                   positions: list[int] | None = None, chunk: int = 64) -> torch.Tensor | None:
    """Stream the early-exit logits of ``info`` [T, d] into ``state`` (in place) and return
    E_t(v) at ``positions`` (indices into ``info``), shape [n, V]; None when none are asked."""
    want = set(positions or ())
    picked: dict[int, torch.Tensor] = {}
    for start in range(0, info.shape[0], chunk):
        stop = min(start + chunk, info.shape[0])
        ent = state.update(parts.logits(info[start:stop], layer))  # [stop-start, V]
        for p in want:
            if start <= p < stop:
                picked[p] = ent[p - start]
    if positions is None:
        return None
    return torch.stack([picked[p] for p in positions]) if positions else torch.empty(0, parts.vocab_size, device=info.device)


@DECODING.register("actdec")
@dataclass
class ActivationDecoding(DecodingMethod):
    alpha: float = 0.5
    layer: int | None = None
    relative_top: float = 0.1
    name: ClassVar[str] = "actdec"

    def info_layer(self, n_layers: int) -> int | None:
        layer = self.layer if self.layer is not None else min(round(0.8125 * n_layers), n_layers - 1)
        if not 0 <= layer < n_layers:
            raise HeadgameError(f"--actdec-layer {layer} is out of range for a {n_layers}-layer model; use 0..{n_layers - 1}")
        return layer

    def logprobs(self, parts: ModelParts, states: PositionStates, *, proper: bool = False) -> torch.Tensor:
        final = F.log_softmax(parts.logits(states.views[0]), dim=-1)
        assert states.sharpness is not None
        if proper:
            return F.log_softmax(final - self.alpha * states.sharpness, dim=-1)
        mask = plausible_mask(final, self.relative_top)
        adjusted = torch.where(mask, final - self.alpha * states.sharpness, torch.full_like(final, -math.inf))
        return torch.where(mask, F.log_softmax(adjusted, dim=-1), torch.full_like(final, FLOOR))

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "info_layer": self.layer if self.layer is not None else "round(0.8125*n_layers)",
                "relative_top": self.relative_top, "positions": "causal: every position j <= t", "floor": FLOOR}


def make_method(name: str, **options) -> DecodingMethod:
    """Instantiate a registered method with the options it accepts (others are ignored)."""
    cls = DECODING.get(name)
    fields = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in options.items() if k in fields and v is not None})

"""From encoder frames to LLM embeddings: frame stacking, the sparse MoE adapter, the linear baseline.

Shapes: B batch, T encoder frames, S = ceil(T / stack) audio tokens, N valid (unpadded) tokens in a
batch, D_in = stack * encoder width, H expert hidden width, E routed experts, k experts per token,
D_out = LLM hidden width.

MoE adapter (Eureka-Audio): router logits x W_g, top-k sparse softmax over them, SiLU expert FFNs
weighted and summed, plus always-on shared experts (MoE-Adapter), then the projection W_P to the LLM
width and an RMSNorm. Load balancing L_aux = E * sum_e P_e f_e (P_e: mean router probability of e,
f_e: fraction of the N*k routing slots that went to e); it is 1 for a perfectly even router.

The batched dispatch groups tokens by expert and runs all experts in two batched matmuls (one
`bmm` per FFN layer over an (E, C, D_in) buffer, C = the busiest expert's token count), so cost
grows with N*k instead of N*E and no Python loop runs per expert. `forward_dense` (every expert
on every token) and `forward_loop` (one expert at a time) compute the same output and exist as
references for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `factor` consecutive frames into one: (B, T, D) -> (B, ceil(T/factor), factor*D).

    Frames past each row's length must already be zero; a partial last group is zero-filled, so a
    clip's tokens do not depend on what it is batched with. Returns the stacked tensor and the
    token lengths ceil(lengths / factor) (B,).
    """
    b, t, d = x.shape
    pad = (-t) % factor
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    stacked = x.reshape(b, (t + pad) // factor, factor * d)
    return stacked, torch.div(lengths + factor - 1, factor, rounding_mode="floor")


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (init `init`): x / rms(x) * g."""

    def __init__(self, dim: int, eps: float = 1e-6, init: float = 1.0):
        super().__init__()
        self.eps = eps
        self.init = init
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


@dataclass
class AdapterAux:
    """What an adapter reports besides its output.

    loss: the weighted auxiliary loss to add to the LM loss (aux_coef * L_aux + z_coef * L_z), scalar.
    load_balance: L_aux itself (1.0 = perfectly balanced), scalar, or None for the linear adapter.
    z_loss: router z-loss, scalar, or None.
    expert_counts: (E,) routing slots each expert received in this batch (valid tokens only), or None.
    """

    loss: torch.Tensor
    load_balance: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None


class LinearAdapter(nn.Module):
    """Falcon3-Audio baseline: one linear projection D_in -> D_out, then the same RMSNorm as the MoE path
    (so the comparison isolates the experts, not the output scale)."""

    def __init__(self, in_dim: int, out_dim: int, norm_eps: float = 1e-6, norm_init: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = RMSNorm(out_dim, norm_eps, norm_init)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, AdapterAux]:
        """x (B, S, D_in), mask (B, S) bool (unused: tokens are independent) -> ((B, S, D_out), aux)."""
        out = self.norm(self.proj(x))
        return out, AdapterAux(loss=x.new_zeros(()))


class MoEAdapter(nn.Module):
    """Sparse mixture-of-experts adapter, see the module docstring.

    Expert weights live in stacked tensors: w1 (E, D_in, H), b1 (E, H), w2 (E, H, D_in), b2 (E, D_in);
    shared experts the same with S_h = n_shared in place of E.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_experts: int = 8,
        top_k: int = 2,
        n_shared: int = 1,
        expert_hidden: int | None = None,
        aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 0.0,
        norm_eps: float = 1e-6,
        norm_init: float = 1.0,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoEAdapter: top_k={top_k} must be between 1 and n_experts={n_experts}")
        hidden = expert_hidden or in_dim
        self.n_experts, self.top_k, self.n_shared = n_experts, top_k, n_shared
        self.aux_loss_coef, self.router_z_loss_coef = aux_loss_coef, router_z_loss_coef
        self.router = nn.Linear(in_dim, n_experts, bias=False)  # W_g
        self.w1 = nn.Parameter(torch.empty(n_experts, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, in_dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, in_dim))
        if n_shared:
            self.shared_w1 = nn.Parameter(torch.empty(n_shared, in_dim, hidden))
            self.shared_b1 = nn.Parameter(torch.zeros(n_shared, hidden))
            self.shared_w2 = nn.Parameter(torch.empty(n_shared, hidden, in_dim))
            self.shared_b2 = nn.Parameter(torch.zeros(n_shared, in_dim))
        self.proj = nn.Linear(in_dim, out_dim)  # W_P
        self.norm = RMSNorm(out_dim, norm_eps, norm_init)
        self.reset_expert_parameters()

    def reset_expert_parameters(self) -> None:
        """Fan-in scaled normal init for the expert matrices, zero biases."""
        with torch.no_grad():
            for name in ("w1", "w2", "shared_w1", "shared_w2"):
                p = getattr(self, name, None)
                if p is not None:
                    p.normal_(0.0, p.shape[1] ** -0.5)
            for name in ("b1", "b2", "shared_b1", "shared_b2"):
                p = getattr(self, name, None)
                if p is not None:
                    p.zero_()

    # -- routing -------------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D_in) -> logits (N, E) in at least float32, probs (N, E), top-k gates (N, k) summing to 1, top-k ids (N, k)."""
        logits = self.router(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # route in >= fp32 under bf16
        probs = logits.softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = top_p / top_p.sum(-1, keepdim=True)  # softmax restricted to the k chosen logits
        return logits, probs, gates, top_i

    def _aux(self, logits: torch.Tensor, probs: torch.Tensor, top_i: torch.Tensor) -> AdapterAux:
        n = top_i.shape[0]
        counts = torch.bincount(top_i.reshape(-1), minlength=self.n_experts)
        if n == 0:
            zero = logits.new_zeros(())
            return AdapterAux(loss=zero, load_balance=zero, z_loss=zero, expert_counts=counts)
        frac = counts.to(probs.dtype) / (n * self.top_k)  # f_e; no gradient, as in Switch/GShard
        load_balance = self.n_experts * (probs.mean(0) * frac).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        loss = self.aux_loss_coef * load_balance
        if self.router_z_loss_coef:
            loss = loss + self.router_z_loss_coef * z_loss
        return AdapterAux(loss=loss, load_balance=load_balance, z_loss=z_loss, expert_counts=counts)

    # -- expert computation ----------------------------------------------------------------------
    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        """Always-on experts on every token: (N, D_in) -> (N, D_in)."""
        xs = x.unsqueeze(0).expand(self.n_shared, -1, -1)
        h = F.silu(torch.baddbmm(self.shared_b1.unsqueeze(1), xs, self.shared_w1))
        return torch.baddbmm(self.shared_b2.unsqueeze(1), h, self.shared_w2).sum(0)

    def _experts_batched(self, x: torch.Tensor, gates: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        """Grouped dispatch: sort routing slots by expert, pack each expert's tokens into an (E, C, D_in)
        buffer, two bmm's, gather back and scatter-add weighted by the gates. (N, D_in) -> (N, D_in)."""
        n, d = x.shape
        k = self.top_k
        flat_e = top_i.reshape(-1)  # (N*k,) expert of each routing slot
        order = torch.argsort(flat_e, stable=True)
        sorted_e = flat_e[order]
        token = torch.div(order, k, rounding_mode="floor")  # token each sorted slot belongs to
        counts = torch.bincount(flat_e, minlength=self.n_experts)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n * k, device=x.device) - starts[sorted_e]  # position inside its expert's group
        capacity = int(counts.max())
        buf = x.new_zeros(self.n_experts, capacity, d)
        buf[sorted_e, slot] = x[token]
        h = F.silu(torch.baddbmm(self.b1.unsqueeze(1), buf, self.w1))
        y = torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)  # (E, C, D_in)
        weighted = y[sorted_e, slot] * gates.reshape(-1)[order].unsqueeze(-1).to(y.dtype)
        return weighted.new_zeros(n, d).index_add(0, token, weighted)  # weighted's dtype: bf16 under autocast

    def _experts_dense(self, x: torch.Tensor, gates: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, weighted by a dense gate matrix with zeros off the top-k."""
        h = F.silu(torch.einsum("nd,edh->enh", x, self.w1) + self.b1.unsqueeze(1))
        y = torch.einsum("enh,ehd->end", h, self.w2) + self.b2.unsqueeze(1)  # (E, N, D_in)
        dense = torch.zeros(x.shape[0], self.n_experts, dtype=y.dtype, device=x.device)
        dense = dense.scatter(1, top_i, gates.to(y.dtype))
        return torch.einsum("ne,end->nd", dense, y)

    def _experts_loop(self, x: torch.Tensor, gates: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        """One expert at a time over the tokens routed to it."""
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            rows, which = (top_i == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            h = F.silu(x[rows] @ self.w1[e] + self.b1[e])
            y = h @ self.w2[e] + self.b2[e]
            out = out.index_add(0, rows, (y * gates[rows, which].unsqueeze(-1).to(y.dtype)).to(out.dtype))
        return out

    # -- public entry points ---------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, dispatch: str = "batched"
    ) -> tuple[torch.Tensor, AdapterAux]:
        """x (B, S, D_in), mask (B, S) bool of valid tokens -> ((B, S, D_out), aux).

        Padded tokens are not routed (they do not count in the load statistics) and come out as zeros.
        `dispatch`: "batched" (default), "dense" or "loop" -- same numbers, different cost.
        """
        b, s, _ = x.shape
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        tokens = x[mask]  # (N, D_in)
        mixed, aux = self.forward_tokens(tokens, dispatch)
        out = mixed.new_zeros(b, s, mixed.shape[-1])
        out[mask] = mixed
        return out, aux

    def forward_tokens(self, tokens: torch.Tensor, dispatch: str = "batched") -> tuple[torch.Tensor, AdapterAux]:
        """Flat valid tokens (N, D_in) -> ((N, D_out), aux)."""
        experts = {"batched": self._experts_batched, "dense": self._experts_dense, "loop": self._experts_loop}
        if dispatch not in experts:
            raise ValueError(f"MoEAdapter: dispatch must be one of {sorted(experts)}, got {dispatch!r}")
        logits, probs, gates, top_i = self.route(tokens)
        y = experts[dispatch](tokens, gates, top_i) if tokens.shape[0] else torch.zeros_like(tokens)
        if self.n_shared and tokens.shape[0]:
            y = y + self._shared(tokens)
        return self.norm(self.proj(y)), self._aux(logits, probs, top_i)

    def forward_dense(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, AdapterAux]:
        """Reference: every expert computes every token (cost E/k times the sparse path)."""
        return self.forward(x, mask, dispatch="dense")

    def forward_loop(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, AdapterAux]:
        """Reference: a Python loop over experts, each on its own tokens."""
        return self.forward(x, mask, dispatch="loop")

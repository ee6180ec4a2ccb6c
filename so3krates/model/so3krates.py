"""The SO3krates network: Graph + pair vectors -> per-atom energies.

The equations are written out in docs/model.md (sections 1-8). Per atom the state is invariant
features h (F) and Euclidean variables x (one (2l+1)-block per degree, no channel axis).
Each layer is Euclidean self-attention (an invariant branch with H heads and an EV branch with
one head per degree, both weighted by learned filters of invariants, no softmax) followed by the
exchange block. Degrees never couple through tensor products: only per-degree squared norms
reach the invariants.

Pairs arrive once per unordered pair (see so3krates.neighbors). Every filter depends only on
invariants symmetric in i and j (the distance and the squared EV differences), so it is
evaluated once per pair and used for both directions; only the cheap attention dot products and
messages are computed per direction.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from so3krates.model import basis
from so3krates.model.config import ModelConfig
from so3krates.model.long_range import (
    ChargeSpinEmbedding, HirshfeldRatios, PartialCharges, coulomb_pair_energies, dispersion_pair_energies,
    half_to_each_atom, long_range_distances,
)
from so3krates.model.zbl import ZBLRepulsion
from so3krates.neighbors import Graph
from so3krates.ops import gather, scatter_sum
from so3krates.system import NUM_ELEMENT_ROWS


@dataclasses.dataclass(frozen=True)
class PairGeometry:
    """Everything the layers need about pairs, computed once per structure."""

    first: Int[Array, " p"]
    second: Int[Array, " p"]
    cutoffs: Float[Array, " p"]  # cutoff function times the pair mask
    harmonics: Float[Array, "p m"]  # Y(r̂) for the direction first -> second
    parity: Float[Array, " m"]  # (-1)^l: Y of the reversed direction is parity * Y
    contract: Float[Array, "m d"]
    expand: Float[Array, "d m"]
    num_atoms: int

    @property
    def receivers(self) -> Int[Array, " 2p"]:
        """Receiving atom of every directed edge: the pairs forwards, then backwards."""
        return jnp.concatenate([self.first, self.second])

    def directed_harmonics(self) -> Float[Array, "2p m"]:
        return jnp.concatenate([self.harmonics, self.parity * self.harmonics])


def _activation(name: str):
    return {"identity": lambda v: v, "silu": nn.silu}[name]


def _mlp(inputs, hidden: int, features: int, name: str):
    """Dense -> SiLU -> Dense, both with bias, no output activation."""
    return nn.Dense(features, name=f"{name}_out")(nn.silu(nn.Dense(hidden, name=f"{name}_in")(inputs)))


BRANCHES = ("invariant", "ev")

# per layer: (radial filter of the invariant branch, of the EV branch), each (p, F)
RadialFilters = list[tuple[Float[Array, "p f"], Float[Array, "p f"]]]


class RadialFilterBank(nn.Module):
    """The radial halves of all filters, every layer and both branches: e(d) -> T x 2 x (p, F).

    Each (layer, branch) has its own MLP K -> F -> F. Being a function of the distance alone,
    the bank can be tabulated for inference (so3krates.model.tabulation). Plain separate
    matmuls: on XLA:CPU they beat one wide or batched matmul (measured).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, radial: Float[Array, "p k"]) -> RadialFilters:
        F = self.config.num_features
        return [
            tuple(_mlp(radial, F, F, f"layer_{layer}_{branch}") for branch in BRANCHES)
            for layer in range(self.config.num_layers)
        ]


class HeadProjection(nn.Module):
    """Separate bias-free square matrices per head, applied to (n, F) features.

    The parameters are one (d x d) matrix per head; they are applied as one block-diagonal
    (F x F) matmul, which costs a little more arithmetic per atom but far fewer kernels.
    """

    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, inputs: Float[Array, "n f"]) -> Float[Array, "n f"]:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
            (self.num_heads, self.head_dim, self.head_dim),
            jnp.float32,
        )
        block_diagonal = jax.scipy.linalg.block_diag(*kernel.astype(inputs.dtype))
        return inputs @ block_diagonal


def head_indicator(num_heads: int, head_dim: int, dtype) -> Float[Array, "f h"]:
    """1 where feature f belongs to head h: ``(P, F) @ it`` sums within heads (a fast
    reduction on XLA:CPU), ``(P, H) @ it.T`` repeats a per-head scalar over its features."""
    return jnp.repeat(jnp.eye(num_heads, dtype=dtype), head_dim, axis=0)


class EuclideanAttention(nn.Module):
    """One ESA block: returns the updates (dh, dx)."""

    config: ModelConfig
    euclidean_variables_are_zero: bool = False  # known at trace time, not a value check

    def _scale(self, head_dim: int) -> float:
        mode = self.config.message_normalization
        if mode == "sqrt_num_features":
            return head_dim**0.5
        if mode == "avg_num_neighbors":
            return float(self.config.avg_num_neighbors)
        return 1.0

    @nn.compact
    def __call__(self, h, x, radial_filters: tuple[Float[Array, "p f"], Float[Array, "p f"]], geometry: PairGeometry):
        cfg = self.config
        F, H, n_degrees = cfg.num_features, cfg.num_heads, len(cfg.degrees)
        head_dim, ev_head_dim = F // H, F // n_degrees
        psi = _activation(cfg.qk_non_linearity)
        n = geometry.num_atoms

        # per-degree squared norms of EV differences: symmetric in i, j
        if self.euclidean_variables_are_zero:
            # the first layer of a zero-initialised model: c_ij = 0 for every pair, so the
            # spherical filters are constants, evaluated once instead of once per pair
            ev_invariants = jnp.zeros((1, n_degrees), h.dtype)
        else:
            difference = gather(x, geometry.second) - gather(x, geometry.first)
            ev_invariants = (difference * difference) @ geometry.contract
        # filter = radial MLP(e(d)) + spherical MLP(c): n_L -> F/4 -> F, per branch
        w_invariant, w_ev = (
            radial + _mlp(ev_invariants, F // 4, F, f"spherical_{branch}")
            for radial, branch in zip(radial_filters, BRANCHES)
        )

        # invariant branch: H heads with q, k, v; EV branch: one head per degree with q, k.
        # Everything stays (rows, F); head sums and broadcasts are matmuls with indicators.
        q = psi(HeadProjection(H, head_dim, name="query")(h))
        k = psi(HeadProjection(H, head_dim, name="key")(h))
        v = HeadProjection(H, head_dim, name="value")(h)
        q_ev = psi(HeadProjection(n_degrees, ev_head_dim, name="query_ev")(h))
        k_ev = psi(HeadProjection(n_degrees, ev_head_dim, name="key_ev")(h))
        heads = head_indicator(H, head_dim, h.dtype)
        ev_heads = head_indicator(n_degrees, ev_head_dim, h.dtype)
        scale, ev_scale = self._scale(head_dim), self._scale(ev_head_dim)
        w_invariant = w_invariant * (geometry.cutoffs[:, None] / scale)
        w_ev = w_ev * (geometry.cutoffs[:, None] / ev_scale)

        dh = jnp.zeros_like(h)
        dx = jnp.zeros_like(x)
        # both directions of every pair share its filters; concatenating the two directions
        # into one gather/scatter was measured slower on XLA:CPU than this loop
        for receivers, senders, sign in ((geometry.first, geometry.second, 1.0), (geometry.second, geometry.first, geometry.parity)):
            alpha = (gather(q, receivers) * w_invariant * gather(k, senders)) @ heads
            dh = dh + scatter_sum((alpha @ heads.T) * gather(v, senders), receivers, n)
            # the EV "values" are the bond's spherical harmonics, not the neighbour's EVs
            beta = (gather(q_ev, receivers) * w_ev * gather(k_ev, senders)) @ ev_heads
            # attention coefficients (p, H) and (p, n_L), forwards then backwards; a no-op unless
            # "intermediates" is mutable (apply(..., mutable=["intermediates"]))
            self.sow("intermediates", "invariant_attention", alpha)
            self.sow("intermediates", "ev_attention", beta)
            dx = dx + scatter_sum((beta @ geometry.expand) * (sign * geometry.harmonics), receivers, n)
        return dh, dx


class Exchange(nn.Module):
    """[a; b] = W [h; c(x)] + bias; h += a, x += b * x (a per-degree gate)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h, x, geometry: PairGeometry):
        F, n_degrees = self.config.num_features, len(self.config.degrees)
        norms = (x * x) @ geometry.contract
        mixed = nn.Dense(F + n_degrees, name="mix")(jnp.concatenate([h, norms], axis=-1))
        a, b = mixed[:, :F], mixed[:, F:]
        return h + a, x + (b @ geometry.expand) * x


class ResidualMLP(nn.Module):
    """h + W2 silu(W1 silu(h) + b1) + b2 (pre-activation residual block)."""

    @nn.compact
    def __call__(self, h):
        F = h.shape[-1]
        return h + nn.Dense(F)(nn.silu(nn.Dense(F)(nn.silu(h))))


def structure_input(values: Float[Array, " g"] | None, graph: Graph, dtype) -> Float[Array, " g"]:
    """A per-structure input of the graph (total charge, unpaired electrons); None reads as 0."""
    if values is None:
        return jnp.zeros((graph.num_structures,), dtype)
    return jnp.asarray(values).astype(dtype)


class SO3krates(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        graph: Graph,
        pair_vectors: Float[Array, "p 3"],
        radial_filters: RadialFilters | None = None,
        long_range_vectors: Float[Array, "q 3"] | None = None,
    ) -> Float[Array, " n"]:
        """Per-atom energies; ``radial_filters`` replaces the radial filter bank (tabulation);
        ``long_range_vectors`` are the vectors of the graph's long-range pairs (needed, and only
        used, by models with long-range terms)."""
        cfg = self.config
        if cfg.has_long_range and long_range_vectors is None:
            raise ValueError(
                "this model has long-range terms: it needs a graph with long-range pairs "
                f"(build_graph(..., long_range_cutoff={cfg.long_range_cutoff})) and their vectors"
            )
        dtype = pair_vectors.dtype
        n = graph.numbers.shape[0]
        distances = basis.safe_norm(pair_vectors)
        units = basis.safe_unit_vectors(pair_vectors, distances)
        cutoffs = basis.cutoff_function(cfg.cutoff_fn, distances, cfg.cutoff, cfg.cutoff_fn_p)
        cutoffs = jnp.where(graph.pair_mask, cutoffs, 0.0)
        contract, expand = basis.degree_matrices(cfg.degrees, dtype)
        geometry = PairGeometry(
            first=graph.pair_first,
            second=graph.pair_second,
            cutoffs=cutoffs,
            harmonics=basis.spherical_harmonics(units, cfg.degrees),
            parity=basis.parity_signs(cfg.degrees, dtype),
            contract=contract,
            expand=expand,
            num_atoms=n,
        )

        h = nn.Embed(NUM_ELEMENT_ROWS, cfg.num_features, name="embedding")(graph.numbers).astype(dtype)
        total_charge = structure_input(graph.total_charge, graph, dtype)
        embeddings = [h]
        if cfg.charge_embedding:
            embeddings.append(ChargeSpinEmbedding(cfg.num_features, name="charge_embedding")(graph, total_charge, dtype))
        if cfg.spin_embedding:
            unpaired = structure_input(graph.unpaired_electrons, graph, dtype)
            embeddings.append(ChargeSpinEmbedding(cfg.num_features, name="spin_embedding")(graph, unpaired, dtype))
        if len(embeddings) > 1:  # a sum of unit-variance embeddings, kept at unit variance
            h = sum(embeddings) / math.sqrt(len(embeddings))
        x = jnp.zeros((n, expand.shape[1]), dtype)
        if cfg.ev_initialization == "neighbor_average":
            directed_cutoffs = jnp.concatenate([cutoffs, cutoffs])[:, None]
            x = scatter_sum(directed_cutoffs * geometry.directed_harmonics(), geometry.receivers, n) / cfg.avg_num_neighbors

        if radial_filters is None:
            radial = basis.radial_basis(cfg.radial_basis_fn, distances, cfg.num_radial_basis_fn, cfg.cutoff)
            radial_filters = RadialFilterBank(cfg, name="radial_filters")(radial)
        for layer in range(cfg.num_layers):
            first_and_zero = layer == 0 and cfg.ev_initialization == "zeros"
            dh, dx = EuclideanAttention(cfg, first_and_zero, name=f"attention_{layer}")(h, x, radial_filters[layer], geometry)
            h, x = h + dh, x + dx
            if cfg.layer_normalization_1:
                h = nn.LayerNorm(epsilon=1e-6, name=f"layer_norm_1_{layer}")(h)
            if cfg.residual_mlp_1:
                h = ResidualMLP(name=f"residual_mlp_1_{layer}")(h)
            h, x = Exchange(cfg, name=f"exchange_{layer}")(h, x, geometry)
            if cfg.residual_mlp_2:
                h = ResidualMLP(name=f"residual_mlp_2_{layer}")(h)
            if cfg.layer_normalization_2:
                h = nn.LayerNorm(epsilon=1e-6, name=f"layer_norm_2_{layer}")(h)
            self.sow("intermediates", "euclidean_variables", x)  # for equivariance checks

        activation = _activation(cfg.energy_activation_fn)
        hidden = activation(nn.Dense(cfg.energy_regression_dim, name="readout_hidden")(h))
        last_init = nn.initializers.zeros if cfg.output_is_zero_at_init else nn.initializers.lecun_normal()
        energies = nn.Dense(1, kernel_init=last_init, name="readout_out")(hidden)[:, 0]
        if cfg.learn_atomic_type_scales:
            scales = self.param("atomic_type_scales", nn.initializers.ones, (NUM_ELEMENT_ROWS,), jnp.float32)
            energies = energies * gather(scales.astype(dtype), graph.numbers)
        if cfg.learn_atomic_type_shifts:
            shifts = self.param("atomic_type_shifts", nn.initializers.zeros, (NUM_ELEMENT_ROWS,), jnp.float32)
            energies = energies + gather(shifts.astype(dtype), graph.numbers)
        if cfg.zbl_repulsion:
            energies = energies + ZBLRepulsion(name="zbl")(
                graph.numbers, distances, cutoffs, graph.pair_first, graph.pair_second, n
            )
        if cfg.has_long_range:
            first, second = graph.long_range_first, graph.long_range_second
            long_range = long_range_distances(graph, long_range_vectors)
        if cfg.electrostatics:
            charges = PartialCharges(cfg.energy_regression_dim, activation, name="partial_charges")(h, graph, total_charge)
            self.sow("intermediates", "charges", charges)
            pair_energies = coulomb_pair_energies(
                gather(charges, first), gather(charges, second), long_range, cfg.long_range_cutoff, cfg.coulomb_erf_width
            )
            energies = energies + half_to_each_atom(pair_energies, first, second, n)
        if cfg.dispersion:
            ratios = HirshfeldRatios(cfg.energy_regression_dim, activation, name="hirshfeld_ratios")(h, graph)
            self.sow("intermediates", "volume_ratios", ratios)
            pair_energies = dispersion_pair_energies(
                gather(graph.numbers, first), gather(graph.numbers, second), gather(ratios, first), gather(ratios, second),
                long_range, cfg.long_range_cutoff, cfg.dispersion_switch_width, cfg.dispersion_damping_scale,
            )
            energies = energies + half_to_each_atom(pair_energies, first, second, n)
        return energies

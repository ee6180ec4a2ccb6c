"""ModelConfig: every SO3krates hyperparameter, declared once, validated, saved with each model.

Field names follow the reference implementation where it has them. Defaults are the 2024 paper's
model (F=132, 3 layers, 4 heads, degrees 1-3, 5 Å, 32 PhysNet RBFs, cosine cutoff); choices the
paper leaves open are recorded here so that every saved model says what it is.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any, Literal

RadialBasis = Literal["physnet", "bernstein", "gaussian"]
CutoffFunction = Literal["cosine", "phys", "polynomial", "exponential"]


class ConfigError(ValueError):
    """A configuration that cannot describe a model (bad value or unknown key)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    num_features: int = 132
    num_layers: int = 3
    num_heads: int = 4
    degrees: tuple[int, ...] = (1, 2, 3)
    cutoff: float = 5.0  # Å
    num_radial_basis_fn: int = 32
    radial_basis_fn: RadialBasis = "physnet"
    cutoff_fn: CutoffFunction = "cosine"
    cutoff_fn_p: int = 6  # exponent of the polynomial (DimeNet) envelope
    # q/k non-linearity psi of the attention: identity (reference v1.0 config) or silu
    qk_non_linearity: Literal["identity", "silu"] = "identity"
    # divide attention scores by sqrt(head dim) (reference default), avg_num_neighbors, or 1
    message_normalization: Literal["sqrt_num_features", "avg_num_neighbors", "identity"] = "sqrt_num_features"
    avg_num_neighbors: float | None = None
    # Euclidean variables start at zero (as the reference code) or at the cutoff-weighted
    # neighbour average of Y(r_ij) / avg_num_neighbors (paper Eq. 11; docs/model.md section 3)
    ev_initialization: Literal["zeros", "neighbor_average"] = "zeros"
    residual_mlp_1: bool = False
    residual_mlp_2: bool = False
    layer_normalization_1: bool = False
    layer_normalization_2: bool = False
    energy_regression_dim: int = 128
    energy_activation_fn: Literal["identity", "silu"] = "silu"
    # the last readout layer starts at zero (reference default): a fresh model predicts E = 0,
    # and training starts from the energy shifts; switch off for random-model demos and tests
    output_is_zero_at_init: bool = True
    learn_atomic_type_scales: bool = False
    learn_atomic_type_shifts: bool = False
    zbl_repulsion: bool = False
    # --- SO3LR's additions (Kabylda et al., JACS 2025; docs/model.md sections 3 and 8) ---
    # embeddings of the total charge and of the number of unpaired electrons (Graph inputs)
    charge_embedding: bool = False
    spin_embedding: bool = False
    # long-range terms, evaluated on the graph's second pair set up to long_range_cutoff:
    # Coulomb between learned partial charges, and dispersion from learned Hirshfeld ratios
    electrostatics: bool = False
    dispersion: bool = False
    long_range_cutoff: float = 12.0  # Å
    coulomb_erf_width: float = 4.0  # Å: sigma of the erf(d / sigma) / d short-range damping
    dispersion_damping_scale: float = 1.2  # scales the damping length of the C6/C8/C10 terms
    dispersion_switch_width: float = 2.0  # Å: dispersion switched off over the last this-much of the cutoff

    def __post_init__(self):
        object.__setattr__(self, "degrees", tuple(int(l) for l in self.degrees))
        problems = []
        if self.num_features <= 0 or self.num_layers <= 0 or self.num_heads <= 0:
            problems.append("num_features, num_layers and num_heads must be positive")
        if not self.degrees or any(not 1 <= l <= 4 for l in self.degrees):
            problems.append(f"degrees must be a non-empty subset of 1..4 (l=0 is never used), got {self.degrees}")
        if len(set(self.degrees)) != len(self.degrees):
            problems.append(f"degrees must not repeat, got {self.degrees}")
        if self.num_features % self.num_heads:
            problems.append(f"num_features={self.num_features} is not divisible by num_heads={self.num_heads}")
        if self.degrees and self.num_features % len(self.degrees):
            problems.append(
                f"num_features={self.num_features} is not divisible by the number of degrees ({len(self.degrees)})"
            )
        if self.num_features % 4:
            problems.append(f"num_features={self.num_features} must be divisible by 4 (spherical filter width F/4)")
        if not self.cutoff > 0:
            problems.append(f"cutoff must be positive, got {self.cutoff}")
        if self.num_radial_basis_fn < 2:
            problems.append("num_radial_basis_fn must be at least 2")
        for name, options in _choices().items():
            if getattr(self, name) not in options:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {options}")
        needs_average = self.message_normalization == "avg_num_neighbors" or self.ev_initialization == "neighbor_average"
        if needs_average and not (self.avg_num_neighbors and self.avg_num_neighbors > 0):
            problems.append("avg_num_neighbors must be set (> 0) for the chosen normalisation/initialisation")
        if self.has_long_range:
            if not self.long_range_cutoff > 0:
                problems.append(f"long_range_cutoff must be positive, got {self.long_range_cutoff}")
            if not self.coulomb_erf_width > 0 or not self.dispersion_damping_scale > 0:
                problems.append("coulomb_erf_width and dispersion_damping_scale must be positive")
            if not 0 < self.dispersion_switch_width <= self.long_range_cutoff:
                problems.append(
                    f"dispersion_switch_width must be in (0, long_range_cutoff], got {self.dispersion_switch_width}"
                )
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def has_long_range(self) -> bool:
        """Whether the energy has terms on the long-range pair set."""
        return self.electrostatics or self.dispersion

    @property
    def takes_charge(self) -> bool:
        """Whether the energy depends on the graph's total charge (embedding or partial charges)."""
        return self.charge_embedding or self.electrostatics

    @property
    def takes_spin(self) -> bool:
        """Whether the energy depends on the graph's number of unpaired electrons."""
        return self.spin_embedding

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["degrees"] = list(self.degrees)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@functools.cache
def _choices() -> dict[str, tuple]:
    """The allowed values of every Literal-typed field."""
    hints = typing.get_type_hints(ModelConfig)
    return {
        name: typing.get_args(hint)
        for name, hint in hints.items()
        if typing.get_origin(hint) is Literal
    }

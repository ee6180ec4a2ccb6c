"""The loss, the optimiser and the jitted training step.

The model is trained on energies minus the per-element shifts (fitted on the training set and
subtracted on the host in float64, see :class:`so3krates.data.batching.PairCache`), so the
potential inside the step has zero shifts and float32 never holds a total energy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from so3krates.data.batching import Batch
from so3krates.potential import Potential, evaluate
from so3krates.system import NUM_ELEMENT_ROWS
from so3krates.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """lr(step) = learning_rate * lr_decay_rate ** (step / lr_decay_steps), smooth per step."""
    return optax.exponential_decay(config.learning_rate, config.lr_decay_steps, config.lr_decay_rate)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    adam = optax.adam(learning_rate_schedule(config))
    if config.grad_clip is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)


def loss_terms(potential: Potential, batch: Batch, dtype: str) -> dict[str, jax.Array]:
    """Per-atom energy MSE and force-component MSE over the real structures and atoms of a batch."""
    out = evaluate(potential, batch.graph, dtype=dtype)
    energy_error = out["energy"] - batch.energies.astype(out["energy"].dtype)
    per_atom = jnp.where(batch.structure_mask, energy_error / jnp.maximum(batch.num_atoms, 1), 0.0)
    force_error = jnp.where(batch.graph.atom_mask[:, None], out["forces"] - batch.forces.astype(out["forces"].dtype), 0.0)
    num_structures = jnp.maximum(jnp.sum(batch.structure_mask), 1)
    num_atoms = jnp.maximum(jnp.sum(batch.graph.atom_mask), 1)
    return {
        "energy_mse": jnp.sum(per_atom**2) / num_structures,
        "forces_mse": jnp.sum(force_error**2) / (3 * num_atoms),
    }


def weighted_loss(terms: dict[str, jax.Array], config: TrainConfig) -> jax.Array:
    return config.energy_weight * terms["energy_mse"] + config.forces_weight * terms["forces_mse"]


def make_train_step(model, config: TrainConfig, optimizer: optax.GradientTransformation):
    """A jitted ``step(params, opt_state, loss_sum, batch) -> (params, opt_state, loss_sum)``.

    ``loss_sum`` accumulates the training loss on the device, so the host never waits for a
    step to finish (the next batch is packed while this one runs).

    A committee (``config.members > 1``) trains all members in this one step: ``params``,
    ``opt_state`` and ``batch`` carry a leading member axis (each member its own batch), the
    update is ``jax.vmap`` of one member's, and ``loss_sum`` adds the members' mean loss.
    """
    dtype = config.dtype
    shifts = np.zeros(NUM_ELEMENT_ROWS, np.float32)

    def loss_fn(params, batch):
        potential = Potential(model=model, params=params, energy_shifts=shifts)
        return weighted_loss(loss_terms(potential, batch, dtype), config)

    def member_step(params, opt_state, batch: Batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    committee = config.members > 1

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, loss_sum, batch: Batch):
        if committee:  # static
            params, opt_state, loss = jax.vmap(member_step)(params, opt_state, batch)
            return params, opt_state, loss_sum + jnp.mean(loss)
        params, opt_state, loss = member_step(params, opt_state, batch)
        return params, opt_state, loss_sum + loss

    return step

"""Spherical harmonics, radial bases and cutoff functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import sph_harm_y

import so3krates  # noqa: F401
from so3krates.model import basis


def unit_vectors(n=200, seed=0):
    r = np.random.default_rng(seed).normal(size=(n, 3))
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def test_spherical_harmonics_are_the_standard_real_orthonormal_ones():
    r = unit_vectors()
    theta, phi = np.arccos(r[:, 2]), np.arctan2(r[:, 1], r[:, 0])
    expected = []
    for l in (1, 2, 3, 4):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), theta, phi)  # complex, with the Condon-Shortley phase
            part = y.imag if m < 0 else y.real
            expected.append(part if m == 0 else np.sqrt(2) * (-1) ** m * part)
    computed = np.asarray(basis.spherical_harmonics(jnp.asarray(r), (1, 2, 3, 4)))
    np.testing.assert_allclose(computed, np.stack(expected, axis=-1), atol=1e-13)


def test_spherical_harmonics_norms_parity_and_zero_vector():
    r = jnp.asarray(unit_vectors())
    degrees = (1, 2, 3, 4)
    y = basis.spherical_harmonics(r, degrees)
    contract, _ = basis.degree_matrices(degrees, jnp.float64)
    sizes = np.array([2 * l + 1 for l in degrees])
    # sum_m Y_lm^2 = (2l+1)/(4 pi); contract carries 1/sqrt(2l+1)
    np.testing.assert_allclose((y * y) @ contract, np.broadcast_to(np.sqrt(sizes) / (4 * np.pi), (len(r), 4)), rtol=1e-12)
    np.testing.assert_allclose(basis.spherical_harmonics(-r, degrees), basis.parity_signs(degrees, jnp.float64) * y, atol=1e-14)
    assert np.all(np.asarray(basis.spherical_harmonics(jnp.zeros((3, 3)), degrees)) == 0.0)


@pytest.mark.parametrize("name", ["cosine", "phys", "polynomial", "exponential"])
def test_cutoff_functions_go_smoothly_from_one_to_zero(name):
    d = jnp.linspace(0.0, 6.0, 601)
    f = basis.cutoff_function(name, d, 5.0)
    assert float(f[0]) == pytest.approx(1.0)
    assert np.all(np.asarray(f[d >= 5.0]) == 0.0)
    assert np.all(np.diff(np.asarray(f)) <= 1e-15), "monotonically decreasing"
    slope = jax.vmap(jax.grad(lambda x: basis.cutoff_function(name, x[None], 5.0)[0]))(d)
    assert abs(float(slope[np.searchsorted(np.asarray(d), 4.999)])) < 1e-2, "C^1 at the cutoff"


@pytest.mark.parametrize("name", ["physnet", "bernstein", "gaussian"])
def test_radial_bases_are_finite_with_finite_gradients_at_zero(name):
    d = jnp.asarray([0.0, 0.5, 1.0, 4.9])
    values = basis.radial_basis(name, d, 16, 5.0)
    assert values.shape == (4, 16) and np.all(np.isfinite(values))
    gradient = jax.grad(lambda x: jnp.sum(basis.radial_basis(name, x, 16, 5.0)))(d)
    assert np.all(np.isfinite(gradient))


def test_bernstein_basis_is_a_partition_of_unity():
    d = jnp.linspace(0.1, 5.0, 50)
    np.testing.assert_allclose(np.sum(np.asarray(basis.radial_basis("bernstein", d, 16, 5.0)), axis=1), 1.0, rtol=1e-12)


def test_safe_norm_has_zero_gradient_and_hessian_at_zero():
    grad = jax.grad(lambda v: basis.safe_norm(v[None])[0])(jnp.zeros(3))
    hess = jax.hessian(lambda v: basis.safe_norm(v[None])[0])(jnp.zeros(3))
    assert np.all(grad == 0) and np.all(np.isfinite(hess))

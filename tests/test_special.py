"""``agentwatch.special.erfc`` against the standard library's ``math.erfc``."""

import math

import numpy as np

from agentwatch.special import COEFFICIENTS, erfc, fit


def exact(x: np.ndarray) -> np.ndarray:
    return np.array([math.erfc(v) for v in x.tolist()])


def test_erfc_is_within_1e_12_of_math_erfc_wherever_it_is_a_normal_double():
    x = np.linspace(0.0, 27.0, 270_001)
    truth = exact(x)
    normal = truth > np.finfo(np.float64).tiny
    assert x[normal].max() > 26.5
    relative = np.abs(erfc(x[normal]) / truth[normal] - 1.0)
    assert relative.max() < 1e-12
    # beyond, it falls through the subnormals to 0 as math.erfc does
    assert np.abs(erfc(x[~normal]) - truth[~normal]).max() < 1e-300
    assert erfc(np.array([30.0, 1e6, np.inf])).tolist() == [0.0, 0.0, 0.0]


def test_erfc_of_negative_numbers_is_two_minus_that_of_their_opposite():
    x = np.linspace(-27.0, 0.0, 27_001)
    assert np.abs(erfc(x) - exact(x)).max() < 1e-12
    assert erfc(-np.inf) == 2.0


def test_erfc_keeps_shape_and_nan_and_gives_a_number_for_a_number():
    x = np.array([[0.5, np.nan], [-1.0, 3.0]])
    out = erfc(x)
    assert out.shape == (2, 2) and np.isnan(out[0, 1])
    assert abs(float(erfc(0.5)) / math.erfc(0.5) - 1.0) < 1e-12
    assert erfc(1.0).shape == ()


def test_an_elements_erfc_does_not_depend_on_the_array_it_is_in():
    """A heartbeat's score must not depend on the batch it came in (the dataflow's
    outputs are the same in one process or two)."""
    x = np.random.default_rng(3).normal(0.0, 6.0, 20_003)
    whole = erfc(x)
    one_by_one = np.array([erfc(x[i : i + 1])[0] for i in range(0, len(x), 97)])
    in_sevens = np.concatenate([erfc(x[i : i + 7]) for i in range(0, len(x), 7)])
    assert np.array_equal(whole[::97], one_by_one)
    assert np.array_equal(whole, in_sevens)


def test_the_coefficients_are_those_a_new_fit_gives():
    again = fit(points=100_001)
    assert max(abs(a - b) for a, b in zip(again, COEFFICIENTS, strict=True)) < 1e-6

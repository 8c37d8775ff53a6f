"""The complementary error function of numpy arrays, without scipy.

The detector takes a normal law's tails (``erfc``) of whole arrays of deviations.
scipy's ``special`` gave it, but importing it cost 0.09–0.13 s of every start of the
dataflow (and of every process that loads the detector), most of it scipy's array-API
layer, for one function (docs/benchmarks.md).

For ``x ≥ 0``, ``erfc(x) = t · exp(P(u) − x²)`` with ``t = 2 / (2 + x)`` and ``u`` the
affine map of ``t`` from ``[2/29, 1]`` onto ``[−1, 1]``; ``P`` is a polynomial of degree
20 fitted by least squares (in the Chebyshev basis, then written in powers of ``u``) to
``ln(erfc(x) / t) + x²`` against ``math.erfc`` on 400,001 points of ``[0, 27]``
(:func:`fit` redoes it). The form is the classic one (Numerical Recipes' ``erfcc`` uses it
with degree 9): ``exp(−x²) / t`` carries the function's fall, so ``P`` is smooth and small.
The relative error is below 1e-12 wherever ``erfc(x)`` is a normal double (``x`` up to
26.5; beyond, it falls through the subnormals to 0 as ``math.erfc`` does), and
``erfc(−x) = 2 − erfc(x)``. ``tests/test_special.py`` holds both.

Each element's value depends on that element alone (additions, products and numpy's
``exp``, which gives the same bits whatever the array's length), so a heartbeat's score
does not depend on the batch it came in.

>>> erfc(np.array([0.0, 1.0, -1.0, np.inf, -np.inf, np.nan])).round(12).tolist()
[1.0, 0.15729920705, 1.84270079295, 0.0, 2.0, nan]
>>> f"{erfc(6.0):.10e}"  # math.erfc(6.0) = 2.1519736712498913e-17
'2.1519736712e-17'
"""

from __future__ import annotations

import numpy as np

#: ``t = 2 / (2 + x)`` runs over ``[T_LOW, 1]`` for ``x`` in ``[0, 27]``.
T_LOW = 2.0 / 29.0
_U_SCALE = 2.0 / (1.0 - T_LOW)
_U_SHIFT = (1.0 + T_LOW) / (1.0 - T_LOW)
#: ``P``'s coefficients in powers of ``u``, the constant first (from :func:`fit`).
COEFFICIENTS = (
    -0.625195311888094, 0.63169968458996, 0.03240928767645795, -0.039698260249282705,
    -0.005057692339758093, 0.00651832033482546, 0.0004070693140459897,
    -0.0014044598066007656, 0.00013735468802484861, 0.00029912543158240693,
    -9.856033171864518e-05, -4.884572708872722e-05, 3.71490203492547e-05,
    1.8258352556722507e-06, -9.823991619083062e-06, 2.2499432935552048e-06,
    1.7840112623721814e-06, -8.257135110853162e-07, -1.950778729519911e-07,
    1.1459713110613593e-07, 9.68355104390041e-09,
)  # fmt: skip
_REVERSED = COEFFICIENTS[-2::-1]
#: Arrays of at most this many elements are taken element by element (:func:`_small`).
SMALL = 12


def erfc(x: np.ndarray | float) -> np.ndarray:
    """``erfc`` of every element of ``x`` (float64; a 0-d result for a number; NaN stays
    NaN). See the module for the method and its accuracy."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    if a.size <= SMALL:
        t, p = _small(a)
    else:
        t = 2.0 / (2.0 + a)
        u = t * _U_SCALE
        u -= _U_SHIFT
        p = np.full(a.shape, COEFFICIENTS[-1])
        for coefficient in _REVERSED:  # Horner
            p *= u
            p += coefficient
        p -= a * a
    y = t * np.exp(p)
    negative = x < 0.0
    if negative.any():
        y = np.where(negative, 2.0 - y, y)
    return y


def _small(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``t`` and the exponent for a few elements, one by one in Python floats: the same
    operations in the same order as the array path, so the same bits (``exp`` is taken by
    numpy in both), without its ~40 calls into numpy (~25 µs however small the array)."""
    ts, exponents = [], []
    for value in a.ravel().tolist():
        t = 2.0 / (2.0 + value)
        u = t * _U_SCALE
        u -= _U_SHIFT
        p = COEFFICIENTS[-1]
        for coefficient in _REVERSED:
            p = p * u + coefficient
        ts.append(t)
        exponents.append(p - value * value)
    return np.array(ts).reshape(a.shape), np.array(exponents).reshape(a.shape)


def fit(degree: int = 20, points: int = 400_001) -> tuple[float, ...]:
    """The coefficients of ``P`` (constant first), fitted anew against ``math.erfc``."""
    import math

    from numpy.polynomial import chebyshev

    x = np.linspace(0.0, 27.0, points)
    exact = np.array([math.erfc(v) for v in x.tolist()])
    normal = exact > 1e-300  # (the subnormals carry fewer digits)
    x, exact = x[normal], exact[normal]
    t = 2.0 / (2.0 + x)
    u = t * _U_SCALE - _U_SHIFT
    series = chebyshev.chebfit(u, np.log(exact / t) + x * x, degree)
    return tuple(float(c) for c in chebyshev.cheb2poly(series))


if __name__ == "__main__":  # print the coefficients fitted anew
    print(fit())

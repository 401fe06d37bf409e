"""Calibration of one label at a time: ECE (equal-width bins), ACE (equal-mass bins), MCE, Brier, and the
data of a reliability diagram.

Binary, one label at a time, on 1-D arrays: netcal's metrics silently treat a multi-hot label matrix as a
multi-class problem, so this module is the implementation the tool uses, and a test checks it against
netcal on the 1-D case. ECE follows Naeini et al. / Guo et al. for the positive class: bins over the
predicted probability p, |mean(y) - mean(p)| weighted by the bin's share of images.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 10


def _bin_stats(bin_index: np.ndarray, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int):
    """Per replicate and bin: total weight, weighted mean score, weighted mean label. Shapes (B, n_bins)."""
    one_hot = np.zeros((scores.size, n_bins))
    one_hot[np.arange(scores.size), bin_index] = 1.0
    count = weights @ one_hot
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = (weights * scores) @ one_hot / count
        frequency = (weights * labels) @ one_hot / count
    return count, confidence, frequency


def equal_width_bins(scores: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    return np.clip((scores * n_bins).astype(int), 0, n_bins - 1)


def equal_mass_bins(scores: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Bins between quantiles of the scores, so each holds about the same number of images."""
    edges = np.quantile(scores, np.linspace(0, 1, n_bins + 1)) if scores.size else np.linspace(0, 1, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, n_bins - 1)


def calibration_errors(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                       n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """ECE, ACE, MCE and Brier for each row of `weights` (B, N).

    ECE and MCE use equal-width bins; ACE uses equal-mass (quantile) bins formed on the full sample and kept for every bootstrap replicate (the replicate
    reweights images; it does not re-rank them).
    """
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    labels = labels.astype(float)
    total = weights.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    for name, bins in (("ece", equal_width_bins(scores, n_bins)), ("ace", equal_mass_bins(scores, n_bins))):
        count, confidence, frequency = _bin_stats(bins, scores, labels, weights, n_bins)
        gap = np.nan_to_num(np.abs(frequency - confidence))
        if name == "ece":  # weighted by each bin's share of images
            out["ece"] = (count * gap).sum(axis=1) / total
            out["mce"] = np.where(count > 0, gap, 0.0).max(axis=1)
        else:  # Nixon et al.'s ACE: the plain mean over non-empty equal-mass bins
            out["ace"] = gap.sum(axis=1) / np.maximum((count > 0).sum(axis=1), 1)
    out["brier"] = (weights * (scores - labels) ** 2).sum(axis=1) / total
    for name in ("mce", "ace"):  # a replicate (or a target) with no image has no calibration either
        out[name] = np.where(total > 0, out[name], np.nan)
    return out


def reliability_diagram(scores: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, list]:
    """Per equal-width bin: edges, mean predicted probability, observed frequency, count (JSON-ready)."""
    count, confidence, frequency = _bin_stats(equal_width_bins(scores, n_bins), scores, labels.astype(float),
                                              np.ones((1, scores.size)), n_bins)

    def clean(row: np.ndarray) -> list:
        return [None if not np.isfinite(v) else round(float(v), 6) for v in row]

    return {"bin_edges": [round(e, 6) for e in np.linspace(0, 1, n_bins + 1).tolist()],
            "confidence": clean(confidence[0]), "frequency": clean(frequency[0]),
            "count": [int(c) for c in count[0]]}


# -- smooth ECE -------------------------------------------------------------------------------------------------
# The smooth ECE of Blasiok and Nakkiran (ICLR 2024): the residual (p - y) kernel-smoothed over p with a
# reflected Gaussian, its mean absolute value under the smoothed density, at the bandwidth where the two are
# equal. The point estimate is relplot's own (`relplot.smECE`). relplot takes no sample weights and spends
# ~8 ms per call searching the bandwidth, so the bootstrap replicates are computed here, vectorised over
# replicates, with the same kernel at the bandwidth chosen on the full sample (as ACE keeps its full-sample
# bins): the interval is the sampling spread of the estimate at that bandwidth. A test checks that unit weights
# give relplot's value.
_DENSITY_EPS = 1e-4        # relplot's BaseKernelMixin.smooth
_SMECE_MESH_POINTS = 200   # relplot.config.smECE_mesh_pts
_REPLICATE_CHUNK = 128     # replicates smoothed at once (memory: chunk x 3 x grid points)


def smooth_ece(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The smooth ECE for each row of `weights` (B, N); row values are image multiplicities. NaN where a row
    draws no image."""
    import relplot

    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    out = np.full(weights.shape[0], np.nan)
    if scores.size == 0:
        return out
    scores, labels = scores.astype(float), labels.astype(float)
    point, sigma = relplot.smECE(scores, labels, return_width=True)
    for start in range(0, weights.shape[0], _REPLICATE_CHUNK):
        chunk = weights[start:start + _REPLICATE_CHUNK]
        out[start:start + len(chunk)] = weighted_smooth_ece(scores, labels, chunk, sigma)
    if np.allclose(weights[0], 1.0):  # the point estimate is relplot's own value
        out[0] = float(point)
    return np.where(weights.sum(axis=1) > 0, out, np.nan)


def weighted_smooth_ece(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """relplot's smooth_ece(f, y, sigma) with the images weighted, one value per row of `weights` (B, N)."""
    mesh = np.linspace(0, 1, max(round(10 / sigma), _SMECE_MESH_POINTS))
    residual = (scores - labels)[None, :]
    numerator = _reflected_gaussian(scores, weights * residual, sigma, mesh)
    density = _reflected_gaussian(scores, weights, sigma, mesh) + _DENSITY_EPS
    smoothed = numerator / density
    return (np.abs(smoothed) * density).sum(axis=1) / density.sum(axis=1)


def _reflected_gaussian(points: np.ndarray, values: np.ndarray, sigma: float, at: np.ndarray) -> np.ndarray:
    """relplot's ReflectedGaussianKernel.apply for each row of `values` (B, N): the values spread linearly onto
    a grid, convolved with a Gaussian reflected at 0 and 1, interpolated at `at`."""
    from scipy import sparse
    from scipy.signal import fftconvolve

    grid_points = max(2000, round(20 / sigma)) // 2 + 1
    cell = (points * (grid_points - 1)).astype(int).clip(0, grid_points - 2)
    fraction = points * (grid_points - 1) - cell
    rows = np.arange(points.size)
    spread = sparse.csr_matrix((np.concatenate([1 - fraction, fraction]),
                                (np.concatenate([rows, rows]), np.concatenate([cell, cell + 1]))),
                               shape=(points.size, grid_points))
    gridded = np.asarray((spread.T @ values.T).T)
    grid = np.linspace(0, 1, grid_points)
    kernel = np.exp(-(grid - 0.5) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    mirrored = np.concatenate([gridded[:, ::-1][:, :-1], gridded, gridded[:, ::-1][:, 1:]], axis=1)
    convolved = fftconvolve(mirrored, kernel[None, :], mode="valid", axes=1)
    smoothed = convolved[:, grid_points // 2: grid_points // 2 + grid_points]
    index = (at * (grid_points - 1)).astype(int).clip(0, grid_points - 2)
    remainder = (at - index / (grid_points - 1)) * (grid_points - 1)
    return smoothed[:, index] * (1 - remainder) + smoothed[:, index + 1] * remainder


# -- calibration intercept and slope -----------------------------------------------------------------------------
# Van Calster's calibration hierarchy (weak calibration), as TRIPOD+AI asks: the slope is b in
# logit P(y) = a + b * logit(p); the intercept ("calibration-in-the-large") is a in logit P(y) = a + logit(p),
# the logit as an offset. Unpenalised maximum likelihood by Newton's method, vectorised over the bootstrap
# replicates (a weighted fit per replicate; sklearn would need one fit each and has no offset). Where the fit
# does not converge (separated classes, one class) the value is NaN: not estimable.
_LOGIT_CLIP = 1e-6
_NEWTON_STEPS = 100
_NEWTON_TOLERANCE = 1e-10
_MAX_STEP = 2.0
_SEPARATED = 50.0  # |intercept| or |slope| beyond this on the logit scale: the classes are separated, no fit


def logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores.astype(float), _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(clipped / (1 - clipped))


def calibration_line(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
    """Calibration intercept and slope for each row of `weights` (B, N)."""
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    x, y = logit(scores), labels.astype(float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        intercept = _fit_offset_intercept(x, y, weights)
        slope = _fit_line(x, y, weights)[1]
    return {"calibration_intercept": np.where(_one_class(y, weights), np.nan, intercept), "calibration_slope": slope}


def _one_class(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights @ y == 0) | (weights @ (1 - y) == 0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow for large |z|


def _newton(parameters: np.ndarray, design: np.ndarray, offset: np.ndarray, y: np.ndarray,
            weights: np.ndarray) -> np.ndarray:
    """Maximum likelihood of logit P(y) = offset + parameters . design (k = 1 or 2 rows), per replicate (row of
    `weights`): Newton's method from the given start, each step capped at _MAX_STEP on the logit scale (a plain
    Newton step from saturated predictions overshoots and diverges). NaN where it does not converge or runs off
    to a separating solution (one class, or scores that separate the classes)."""
    replicates, k = weights.shape[0], design.shape[0]
    converged = np.zeros(replicates, dtype=bool)
    for _ in range(_NEWTON_STEPS):
        p = sigmoid(offset[None, :] + parameters @ design)
        residual, variance = weights * (y - p), weights * p * (1 - p)
        if k == 1:
            step = (residual @ design[0] / (variance @ (design[0] * design[0])))[:, None]
        else:  # the 2 x 2 system, solved in closed form for every replicate at once
            g0, g1 = residual @ design[0], residual @ design[1]
            h00, h01, h11 = variance @ (design[0] ** 2), variance @ (design[0] * design[1]), variance @ (design[1] ** 2)
            determinant = h00 * h11 - h01 ** 2
            step = np.stack([(h11 * g0 - h01 * g1) / determinant, (h00 * g1 - h01 * g0) / determinant], axis=1)
        step[converged | ~np.isfinite(step).all(axis=1)] = 0.0
        largest = np.abs(step).max(axis=1, keepdims=True)
        step = np.where(largest > _MAX_STEP, step * _MAX_STEP / np.maximum(largest, 1e-300), step)
        parameters = parameters + step
        converged |= np.abs(step).max(axis=1) < _NEWTON_TOLERANCE
        if converged.all() or (np.abs(parameters) >= _SEPARATED).any(axis=1)[~converged].all():
            break
    usable = converged & np.isfinite(parameters).all(axis=1) & (np.abs(parameters) < _SEPARATED).all(axis=1)
    return np.where(usable[:, None], parameters, np.nan)


def _warm_started(design: np.ndarray, offset: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The first row fitted from zero (every p = 0.5, the usual start), the replicates from its solution: a
    replicate's fit lies near the full sample's, so Newton needs a few steps instead of many."""
    k = design.shape[0]
    first = _newton(np.zeros((1, k)), design, offset, y, weights[:1])
    start = np.where(np.isfinite(first), first, 0.0).repeat(weights.shape[0] - 1, axis=0)
    rest = _newton(start, design, offset, y, weights[1:]) if weights.shape[0] > 1 else np.zeros((0, k))
    return np.vstack([first, rest])


def _fit_offset_intercept(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return _warm_started(np.ones((1, x.size)), x, y, weights)[:, 0]


def _fit_line(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per replicate; NaN for one class, or where every drawn positive scores above every drawn negative
    (separated: the likelihood has no maximum, and Newton would stop on a saturated, meaningless slope)."""
    fitted = _warm_started(np.vstack([np.ones(x.size), x]), np.zeros(x.size), y, weights)
    drawn = weights > 0
    separated = np.where(drawn & (y == 1), x, np.inf).min(axis=1) > np.where(drawn & (y == 0), x, -np.inf).max(axis=1)
    fitted[_one_class(y, weights) | separated] = np.nan
    return fitted[:, 0], fitted[:, 1]


def fit_line(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of logit P(y) = a + b logit(p), unpenalised: Platt's recalibration map (NaN when not estimable)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        a, b = _fit_line(logit(scores), labels.astype(float), np.ones((1, scores.size)))
    return float(a[0]), float(b[0])

SMOOTH_CURVE_POINTS = 51
SMOOTH_BAND_REPLICATES = 200


def smooth_reliability(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict | None:
    """relplot's smooth reliability curve (the kernel regression of y on p, at the smooth ECE's bandwidth) with a
    95% band from the patient bootstrap (the first SMOOTH_BAND_REPLICATES rows of `weights`; relplot's own band
    resamples images with an unseeded generator, so it is computed here) and the density of the predictions.
    JSON-ready; None for an empty target."""
    import relplot

    if scores.size == 0:
        return None
    scores, labels = scores.astype(float), labels.astype(float)
    _, sigma = relplot.smECE(scores, labels, return_width=True)
    mesh = np.linspace(0, 1, SMOOTH_CURVE_POINTS)
    rows = np.ones((1, scores.size))
    if weights is not None:
        rows = np.vstack([rows, np.atleast_2d(weights)[:SMOOTH_BAND_REPLICATES]])
    density = _reflected_gaussian(scores, rows, sigma, mesh) + _DENSITY_EPS
    curves = _reflected_gaussian(scores, rows * labels[None, :], sigma, mesh) / density
    drawn = rows.sum(axis=1) > 0
    lower, upper = (np.quantile(curves[1:][drawn[1:]], [0.025, 0.975], axis=0) if drawn[1:].any()
                    else (curves[0], curves[0]))

    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 5) for v in values]

    return {"sigma": round(float(sigma), 6), "mesh": rounded(mesh), "mean": rounded(curves[0]),
            "lower": rounded(lower), "upper": rounded(upper), "density": rounded(density[0] / density[0].sum())}

"""Inter-annotator agreement and rank correlations, as plain numpy functions (no database, no torch).

Every statistic comes back as a `Stat`: a value, or `None` plus the reason it is undefined, so reports
never print NaN. Input for agreement is a count table: one row per item, one column per category,
cell = how many raters put that item in that category (rows may have different totals).

numpy only (scipy is not imported: it costs about a second at start-up, and `analyze` is a CLI); the rank
correlations are checked against scipy in tests/test_agreement.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Stat:
    """A statistic that may be undefined. `reason` says why `value` is None."""

    value: float | None
    reason: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    ci_note: str | None = None  # why there is no CI, or how many resamples it left out

    @classmethod
    def undefined(cls, reason: str, n: int | None = None) -> "Stat":
        return cls(None, reason, n=n)

    def to_json(self) -> dict[str, Any]:
        return {"value": _finite(self.value), "reason": self.reason, "ci_low": _finite(self.ci_low),
                "ci_high": _finite(self.ci_high), "n": self.n, "ci_note": self.ci_note}

    def set_ci(self, samples: np.ndarray, level: float) -> "Stat":
        self.ci_low, self.ci_high, self.ci_note = checked_ci(samples, level)
        return self

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return f"undefined ({self.reason})"
        out = f"{self.value:.{digits}f}"
        if self.ci_low is not None and self.ci_high is not None:
            out += f" [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        if self.ci_note:
            out += f" ({self.ci_note})"
        return out


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- count tables

def count_table(item_codes: np.ndarray, category_codes: np.ndarray, n_items: int, n_categories: int) -> np.ndarray:
    """Items x categories count table from parallel arrays of (item index, category index), one per rating."""
    flat = np.bincount(item_codes * n_categories + category_codes, minlength=n_items * n_categories)
    return flat.reshape(n_items, n_categories)


def kappa_rater_count(table: np.ndarray) -> int | None:
    """The rater count (among items with at least two) whose items keep the most ratings (items x raters,
    ties to more raters): kappa needs one count, and this drops the fewest ratings. Not always the most
    common count: 10 items with 2 raters (20 ratings) lose to 7 with 3 (21)."""
    counts = table.sum(axis=1)
    counts = counts[counts >= 2]
    if counts.size == 0:
        return None
    values, freq = np.unique(counts, return_counts=True)
    best = max(zip(freq * values, values), key=lambda pair: (pair[0], pair[1]))
    return int(best[1])


# ---------------------------------------------------------------- kappas

def fleiss_kappa(table: np.ndarray) -> Stat:
    """Fleiss' (1971) kappa: chance agreement from the pooled category shares. Needs equal raters per item."""
    return _kappa(table, free_marginal=False)


def randolph_kappa(table: np.ndarray) -> Stat:
    """Randolph's (2005) free-marginal kappa: chance agreement 1/k for k categories.

    This is what statsmodels calls `fleiss_kappa(..., method='randolph')` (alias 'uniform').
    """
    return _kappa(table, free_marginal=True)


def _kappa(table: np.ndarray, *, free_marginal: bool) -> Stat:
    table = np.asarray(table, dtype=float)
    n_items, n_categories = table.shape
    if n_items < 2:
        return Stat.undefined(f"needs at least 2 items with equal rater counts, got {n_items}", n=n_items)
    raters = table.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        return Stat.undefined("needs the same number (>= 2) of raters on every item", n=n_items)
    m = raters[0]
    observed = ((table * table).sum(axis=1) - m) / (m * (m - 1))
    p_observed = observed.mean()
    if free_marginal:
        p_chance = 1.0 / n_categories
    else:
        shares = table.sum(axis=0) / table.sum()
        p_chance = float((shares * shares).sum())
        if p_chance >= 1.0 - 1e-12:
            return Stat.undefined("all ratings fall in one category, so chance agreement is 1", n=n_items)
    return Stat(float((p_observed - p_chance) / (1.0 - p_chance)), n=n_items)


# ---------------------------------------------------------------- simple agreement

def percent_agreement(table: np.ndarray) -> Stat:
    """Mean share of agreeing rater pairs per item (x100), over items with at least two raters."""
    table = np.asarray(table, dtype=float)
    raters = table.sum(axis=1)
    keep = raters >= 2
    if not keep.any():
        return Stat.undefined("no item has two or more raters", n=0)
    table, raters = table[keep], raters[keep]
    pairs_agreeing = ((table * (table - 1)).sum(axis=1)) / (raters * (raters - 1))
    return Stat(float(pairs_agreeing.mean() * 100), n=int(keep.sum()))


def unanimous_items(table: np.ndarray) -> int:
    """Items with at least two raters, all in the same category."""
    table = np.asarray(table)
    raters = table.sum(axis=1)
    return int(((raters >= 2) & (table.max(axis=1) == raters)).sum())


# ---------------------------------------------------------------- Krippendorff's alpha

def krippendorff_alpha_ordinal(table: np.ndarray) -> Stat:
    """Krippendorff's alpha with the ordinal metric; columns are categories in scale order (low to high).

    Handles any number of raters per item (missing ratings): items with fewer than two ratings are not
    pairable and drop out, as in Krippendorff (2011).
    """
    table = np.asarray(table, dtype=float)
    raters = table.sum(axis=1)
    table = table[raters >= 2]
    raters = raters[raters >= 2]
    if table.shape[0] == 0:
        return Stat.undefined("no item has two or more ratings", n=0)
    weights = 1.0 / (raters - 1.0)
    # coincidence matrix: o_ck = sum_u (n_uc * n_uk - [c == k] n_uc) / (m_u - 1)
    coincidence = (table * weights[:, None]).T @ table - np.diag((table * weights[:, None]).sum(axis=0))
    marginals = coincidence.sum(axis=1)
    total = marginals.sum()
    delta = _ordinal_distance(marginals)
    expected = (np.outer(marginals, marginals) * delta).sum()
    if expected <= 0:
        return Stat.undefined("all ratings are identical, so there is no variation to agree on",
                              n=int(table.shape[0]))
    observed = (coincidence * delta).sum()
    return Stat(float(1.0 - (total - 1.0) * observed / expected), n=int(table.shape[0]))


def _ordinal_distance(marginals: np.ndarray) -> np.ndarray:
    """delta^2_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2."""
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    size = len(marginals)
    c, k = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    low, high = np.minimum(c, k), np.maximum(c, k)
    between = cumulative[high + 1] - cumulative[low]
    return (between - (marginals[c] + marginals[k]) / 2.0) ** 2


# ---------------------------------------------------------------- correlations

def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho = Pearson correlation of average ranks; None when undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or _constant(x) or _constant(y):
        return None
    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (tie-corrected); None when undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or _constant(x) or _constant(y):
        return None
    return kendall_tau_b(x, y)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their ranks), as scipy.stats.rankdata."""
    _, inverse, counts = np.unique(np.asarray(values, float), return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    return (below + (counts + 1) / 2.0)[inverse]


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def count_inversions(ranks: np.ndarray) -> int:
    """Pairs i < j with ranks[i] > ranks[j] (strict), by a bottom-up merge sort vectorised per level."""
    ranks = np.asarray(ranks, np.int64)
    n = ranks.size
    size = 1 << max(0, (n - 1).bit_length())
    blocks = np.full(size, n + 1, np.int64)       # padding sorts last and inverts with nothing
    blocks[:n] = ranks
    inversions, width, stride = 0, 1, n + 2
    while width < size:
        pairs = blocks.reshape(-1, 2, width)
        offset = (np.arange(pairs.shape[0], dtype=np.int64) * stride)[:, None]
        left = (pairs[:, 0, :] + offset).ravel()  # each left block is sorted; offsets keep the rows apart
        not_above = np.searchsorted(left, (pairs[:, 1, :] + offset).ravel(), side="right")
        not_above -= np.repeat(np.arange(pairs.shape[0]) * width, width)
        inversions += int((width - not_above).sum())
        blocks = np.sort(pairs.reshape(-1, 2 * width), axis=1).ravel()
        width *= 2
    return inversions


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b in O(n log n) (Knight 1966), equal to scipy.stats.kendalltau(variant='b')."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    order = np.lexsort((y, x))                    # by x, then y: tied-x pairs are never inversions
    y_ranks = np.unique(y, return_inverse=True)[1].ravel()
    discordant = count_inversions(y_ranks[order])
    pairs = n * (n - 1) // 2
    x_ties, y_ties = _tied_pairs(x), _tied_pairs(y)
    joint = _tied_pairs(np.unique(np.stack([x, y], axis=1), axis=0, return_inverse=True)[1].ravel())
    numerator = pairs - x_ties - y_ties + joint - 2 * discordant
    return float(numerator / math.sqrt((pairs - x_ties) * (pairs - y_ties)))


CORRELATIONS = {"spearman": spearman, "kendall": kendall}


def correlation_undefined_reason(x: np.ndarray, y: np.ndarray) -> str | None:
    if len(x) < 3:
        return f"needs at least 3 pairs, got {len(x)}"
    if _constant(np.asarray(x)):
        return "the human scores are all equal"
    if _constant(np.asarray(y)):
        return "the automatic scores are all equal"
    return None


# Past this share of resamples where a statistic is undefined (every rating the same, constant scores), a
# percentile interval over the rest would describe other data than the study's: no CI is given.
MAX_UNDEFINED_RESAMPLES = 0.05


def checked_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None, str | None]:
    """`percentile_ci`, withheld when too many resamples are undefined; the note says what was left out."""
    samples = np.asarray(samples, float)
    undefined = float((~np.isfinite(samples)).mean()) if samples.size else 0.0
    if undefined > MAX_UNDEFINED_RESAMPLES:
        return None, None, f"no CI: undefined in {undefined:.0%} of resamples, too few items"
    low, high = percentile_ci(samples, level)
    return low, high, (f"{undefined:.1%} of resamples undefined, left out" if undefined else None)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval over the finite samples (None when there are none)."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None, None
    tail = (1.0 - level) / 2.0 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                    chunk_elements: int = 2_000_000) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of `values`, in memory-bounded chunks."""
    values = np.asarray(values, float)
    n = values.size
    rows_per_chunk = max(1, chunk_elements // max(n, 1))
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - start)
        out[start:start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, idx: np.ndarray, chunk_elements: int = 2_000_000) -> np.ndarray:
    """Spearman's rho on each resample (row of `idx`) without sorting each resample.

    A resample only repeats original values, so an element's average rank inside it follows from how many
    resampled values are smaller (a cumulative sum over the original sort order) plus half its tie group.
    Rho is then a Pearson correlation weighted by how often each element was drawn. O(resamples x n).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n_boot, n = idx.shape
    rows_per_chunk = max(1, chunk_elements // max(n, 1))
    out = np.empty(n_boot)
    groups = [_tie_groups(x), _tie_groups(y)]
    for start in range(0, n_boot, rows_per_chunk):
        part = idx[start:start + rows_per_chunk]
        rows = part.shape[0]
        weights = np.bincount((part + np.arange(rows)[:, None] * n).ravel(), minlength=rows * n)
        weights = weights.reshape(rows, n).astype(float)
        rx, ry = (_resample_ranks(weights, *g) for g in groups)
        mx = (weights * rx).sum(axis=1, keepdims=True) / n
        my = (weights * ry).sum(axis=1, keepdims=True) / n
        dx, dy = rx - mx, ry - my
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + rows] = (weights * dx * dy).sum(axis=1) / np.sqrt(
                (weights * dx * dx).sum(axis=1) * (weights * dy * dy).sum(axis=1))
    return out


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sort order, start of each tie group in that order, group index of each element)."""
    _, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    return order, starts, inverse


def _resample_ranks(weights: np.ndarray, order: np.ndarray, starts: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    group_weight = np.add.reduceat(weights[:, order], starts, axis=1)
    below = np.cumsum(group_weight, axis=1) - group_weight
    return (below + (group_weight + 1.0) / 2.0)[:, inverse]


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of n elements was drawn in each resample (rows of idx) -> (resamples, n) floats."""
    rows = idx.shape[0]
    flat = np.bincount((idx + np.arange(rows)[:, None] * n).ravel(), minlength=rows * n)
    return flat.reshape(rows, n).astype(float)


MAX_KENDALL_LEVELS = 64


def bootstrap_kendall(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall's tau-b on each resample (row of idx), from draw counts when one side has few distinct values.

    Item scores take few values (sums of a few ratings), so with k distinct values of the coarser variable
    the concordant-minus-discordant count of a resample is built level by level from weighted cumulative
    sums over the other variable's order: O(k x resamples x n), no sort per resample.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.unique(x).size > np.unique(y).size:
        x, y = y, x
    levels, level_of = np.unique(x, return_inverse=True)
    if levels.size > MAX_KENDALL_LEVELS:
        return np.array([_tau_or_nan(x[row], y[row]) for row in idx])
    weights = resample_weights(idx, x.size)
    # items laid out in y order: one column per item, so placing a level's weights is a plain assignment
    order = np.argsort(y, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    sorted_y = y[order]
    group_start = np.searchsorted(sorted_y, sorted_y, side="left")    # per sorted position
    group_end = np.searchsorted(sorted_y, sorted_y, side="right")     # one past the tie group
    rows = weights.shape[0]
    below = np.zeros((rows, order.size + 1))     # column 0 stays 0: cumulative[:, start] = strictly lower y
    numerator = np.zeros(rows)
    for level in range(levels.size):
        members = np.flatnonzero(level_of == level)
        level_weights = weights[:, members]
        spots = position[members]
        if level:
            cumulative = np.cumsum(below, axis=1)
            less = cumulative[:, group_start[spots]]                     # lower x, strictly lower y
            greater = cumulative[:, -1:] - cumulative[:, group_end[spots]]  # lower x, strictly higher y
            numerator += np.einsum("ij,ij->i", level_weights, less - greater)
        below[:, spots + 1] = level_weights
    total = weights.sum(axis=1)
    pairs = total * (total - 1) / 2
    level_totals = np.stack([weights[:, level_of == level].sum(axis=1) for level in range(levels.size)], axis=1)
    x_ties = (level_totals * (level_totals - 1) / 2).sum(axis=1)
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_y) != 0])
    group_totals = np.add.reduceat(weights[:, order], starts, axis=1)
    y_ties = (group_totals * (group_totals - 1) / 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / np.sqrt((pairs - x_ties) * (pairs - y_ties))


def _add_columns(target: np.ndarray, columns: np.ndarray, values: np.ndarray) -> None:
    """target[:, columns[j]] += values[:, j] for every j (repeated columns add up)."""
    order = np.argsort(columns, kind="stable")
    sorted_columns = columns[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_columns) != 0])
    target[:, sorted_columns[starts]] += np.add.reduceat(values[:, order], starts, axis=1)


def _tau_or_nan(x: np.ndarray, y: np.ndarray) -> float:
    value = kendall(x, y)
    return np.nan if value is None else value


def rowwise_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks within each row of a (rows, few columns) array; a row with NaN gets NaN ranks."""
    values = np.asarray(values, float)
    less = (values[:, :, None] > values[:, None, :]).sum(axis=2)
    equal = (values[:, :, None] == values[:, None, :]).sum(axis=2)
    ranks = less + (equal + 1) / 2.0
    ranks[np.isnan(values).any(axis=1)] = np.nan
    return ranks


def bootstrap_agreement(binary: np.ndarray, full: np.ndarray, modal: int | None,
                        weights: np.ndarray) -> dict[str, np.ndarray]:
    """Fleiss' and Randolph's kappa (binary table, items with `modal` raters) and ordinal alpha (full table)
    on each resample of items, given as draw counts (resamples x items). NaN where undefined."""
    binary, full = np.asarray(binary, float), np.asarray(full, float)
    rows = weights.shape[0]
    out = {name: np.full(rows, np.nan) for name in ("fleiss", "randolph", "alpha")}
    raters = binary.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if modal is not None and modal >= 2:
            mask = raters == modal
            table, drawn = binary[mask], weights[:, mask]
            agreeing = ((table * table).sum(axis=1) - modal) / (modal * (modal - 1))
            count = drawn.sum(axis=1)
            observed = drawn @ agreeing / count
            shares = (drawn @ table) / (count * modal)[:, None]
            chance = (shares * shares).sum(axis=1)
            fleiss = (observed - chance) / (1.0 - chance)
            fleiss[chance >= 1.0 - 1e-12] = np.nan
            out["fleiss"] = np.where(count >= 2, fleiss, np.nan)
            uniform = 1.0 / table.shape[1]
            out["randolph"] = np.where(count >= 2, (observed - uniform) / (1.0 - uniform), np.nan)
        pairable = full.sum(axis=1) >= 2
        if pairable.any():
            table = full[pairable]
            size = table.shape[1]
            per_item = (table[:, :, None] * table[:, None, :] - table[:, :, None] * np.eye(size)[None]) / (
                table.sum(axis=1) - 1.0)[:, None, None]
            coincidence = (weights[:, pairable] @ per_item.reshape(len(table), -1)).reshape(rows, size, size)
            marginals = coincidence.sum(axis=2)
            total = marginals.sum(axis=1)
            cumulative = np.concatenate([np.zeros((rows, 1)), np.cumsum(marginals, axis=1)], axis=1)
            c, k = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
            low, high = np.minimum(c, k), np.maximum(c, k)
            between = cumulative[:, high + 1] - cumulative[:, low]
            delta = (between - (marginals[:, c] + marginals[:, k]) / 2.0) ** 2
            expected = (marginals[:, :, None] * marginals[:, None, :] * delta).sum(axis=(1, 2))
            observed = (coincidence * delta).sum(axis=(1, 2))
            alpha = 1.0 - (total - 1.0) * observed / expected
            out["alpha"] = np.where(expected > 0, alpha, np.nan)
    return out


def bootstrap_agreement_resamples(binary: np.ndarray, full: np.ndarray, modal: int | None, n_boot: int,
                                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`bootstrap_agreement` over `n_boot` resamples of the items, drawn as counts of item *types*.

    The kappas and alpha depend on a resample only through how many items of each distinct count row
    (type) it holds, and resampling n items with replacement gives type counts ~ Multinomial(n, type
    shares): the same distribution as drawing item indices, at a cost of resamples x types (types are
    few: a handful of raters on a handful of scale points)."""
    binary, full = np.asarray(binary), np.asarray(full)
    rows = np.concatenate([binary, full], axis=1).astype(np.int64)
    base = int(rows.max(initial=0)) + 1
    if rows.size and base ** rows.shape[1] < 2**62:     # one integer per row: a 1-D unique is much faster
        keys = rows @ (base ** np.arange(rows.shape[1], dtype=np.int64))
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        types = rows[first]
    else:
        types, counts = np.unique(rows, axis=0, return_counts=True)
    n = int(counts.sum())
    draws = rng.multinomial(n, counts / n, size=n_boot).astype(float)
    return bootstrap_agreement(types[:, :binary.shape[1]], types[:, binary.shape[1]:], modal, draws)


def bootstrap_means_grouped(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_boot resamples with replacement, drawn as counts per distinct value (multinomial): the
    same distribution as `bootstrap_means`, fast when values repeat (item scores take few values)."""
    distinct, counts = np.unique(np.asarray(values, float), return_counts=True)
    n = int(counts.sum())
    draws = rng.multinomial(n, counts / n, size=n_boot)
    return draws @ distinct / n

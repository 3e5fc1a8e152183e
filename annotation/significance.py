"""Paired significance tests over items, Holm's correction, stable per-group random generators (numpy only).

A paired comparison has one difference per item (system A's item score minus system B's on the same input,
or the model explanation's score minus the gold explanation's on the same item by the same annotators).
Both resample items:
  - paired bootstrap: percentile CI of the mean difference (no p-value: a bootstrap around the observed mean
    gave p = 0 whenever every difference had the same sign, e.g. 3 items, where the exact test says 0.25);
  - paired permutation (sign flip), the p-value: under H0 the two members of each pair are exchangeable, so
    each difference keeps or flips its sign at random; exact over all 2^n sign vectors when 2^n <= the
    resamples, else p = (1 + #{|mean*| >= |mean|}) / (1 + permutations).
Holm's step-down correction controls the family-wise error over the pairs of one family.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from annotation.agreement import percentile_ci


def stable_rng(seed: int, *key: Any) -> np.random.Generator:
    """A generator that depends only on the seed and the group's key, not on row order or other groups."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in key).encode("utf-8")).digest()
    return np.random.default_rng([int(seed) % 2**63, int.from_bytes(digest[:8], "little")])


def resample_count(n_boot: int, n_items: int, budget: int, minimum: int = 100) -> int:
    """Resamples for an n-item statistic: all of n_boot unless resamples x items would pass the budget."""
    return int(min(n_boot, max(minimum, budget // max(n_items, 1))))


@dataclass
class PairedTest:
    n_items: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_permutation: float | None
    n_resamples: int
    exact: bool = False  # p_permutation enumerated every sign vector (n_resamples = 2^n)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def paired_test(diffs: np.ndarray, n_resamples: int, rng: np.random.Generator, level: float = 0.95) -> PairedTest:
    """Paired bootstrap CI + p and sign-flip permutation p for the mean of per-item differences.

    Both resample through counts per distinct difference (item differences take few values): a bootstrap
    resample's counts are Multinomial(n, shares) and a sign flip of the c items with difference v flips
    Binomial(c, 1/2) of them, the same distributions as drawing per item, at a cost of resamples x values.
    """
    diffs = np.asarray(diffs, float)
    n = int(diffs.size)
    if n < 2:
        return PairedTest(n, float(diffs.mean()) if n else None, None, None, None, 0,
                          reason=f"needs at least 2 paired items, got {n}")
    observed = math.fsum(diffs) / n
    values, counts = np.unique(diffs, return_counts=True)
    boot = rng.multinomial(n, counts / n, size=n_resamples) @ values / n
    low, high = percentile_ci(boot, level)
    exact = 2 ** n <= n_resamples
    if exact:  # every sign vector once: bit j of row i flips item j
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        flipped = signs @ diffs / n
    else:
        flipped = (counts - 2 * rng.binomial(counts, 0.5, size=(n_resamples, values.size))) @ values / n
    # a tiny tolerance so that flips equal to the observed mean up to rounding count as "as extreme"
    extreme = int((np.abs(flipped) >= abs(observed) - 1e-9 * max(1.0, abs(observed))).sum())
    p_perm = extreme / 2 ** n if exact else (1 + extreme) / (1 + n_resamples)
    return PairedTest(n, observed, low, high, float(p_perm), 2 ** n if exact else n_resamples, exact)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values (None stays None and does not count as a test)."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    m = len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted

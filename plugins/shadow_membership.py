"""Strong membership inference: shadow models, the likelihood-ratio attack, labels only.

The global threshold (``mia-threshold``) and the loss threshold (``mia-loss``) score every
row by one rule. The attacks here learn what a member looks like for this architecture and
training procedure: shadow models trained by the model's own recipe on known data
(``mia-shadow``, ``lira``), or need no scores at all (``mia-label-only``).

Shadow models are trained on the audit's population (the training split followed by the
test split; an attacker who holds candidate rows of both kinds) through
:func:`gauntlet.train_shadows`: each training set depends only on the shadow's index and
``shadow_seed``, so the recipe's cache trains every shadow once per audit, shared by every
defense and by both attacks (``mia-shadow``'s four are ``lira``'s first four). Each
shadow is deployed behind the same defense as the target: the attacker is assumed to know
the deployment (Kerckhoffs), and calibrates on outputs processed the way the target's are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import (
    Access,
    Attack,
    Dataset,
    MembershipAttack,
    Model,
    Shadows,
    hookimpl,
    param,
    train_shadows,
)

#: Probabilities are floored here before taking logs.
_FLOOR = 1e-30


def logit_confidence(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Carlini et al.'s logit-scaled confidence of the true class:
    ``log p_y - log sum_{j != y} p_j``, with the other classes summed (not ``1 - p_y``)
    so a confident answer keeps its precision. Roughly Gaussian across shadow models,
    which the likelihood ratio assumes."""
    p = np.asarray(proba, dtype=np.float64)
    rows = np.arange(len(y))
    true = p[rows, y]
    rest = p.sum(axis=1) - true
    return np.log(np.maximum(true, _FLOOR)) - np.log(np.maximum(rest, _FLOOR))


class _ShadowAttack(MembershipAttack):
    """Shared parameters and shadow training of the shadow-model attacks."""

    needs_recipe = True
    shadow_rows: int = param(0, "rows each shadow model trains on (0: as many as the training "
                                "split, at most half the population)", ge=0)
    shadow_seed: int = param(0, "seed of the shadows' training sets and trainings (the same "
                                "seed shares shadows between attacks and defenses)", ge=0)

    def _shadows(self, model: Model, dataset: Dataset, k: int) -> Shadows:
        return train_shadows(model, dataset, k, self.shadow_rows, self.shadow_seed)


class LiRA(_ShadowAttack):
    """LiRA: a row's confidence, likelier under shadows trained with it than without?

    Carlini, Chien, Nasr, Song, Terzis & Tramer, 2022, "Membership Inference Attacks From
    First Principles". For every evaluated row, the logit-scaled confidence of its true
    class (:func:`logit_confidence`) is collected from the shadows that trained on it (IN)
    and those that did not (OUT), and a Gaussian fitted to each. Online: the score is the
    log likelihood ratio of the target's confidence under IN against OUT. Offline: only
    OUT is used, the score is how far above the OUT mean the target's confidence sits
    (in OUT standard deviations), so no shadow needs the row itself. With few shadows the
    paper fits one variance for all rows (``variance = "global"``, the default); a row no
    shadow trained on (or every shadow did) falls back to the mean over all rows.

    The point is the true-positive rate at a very low false-positive rate: a few rows the
    model memorised stand out against their own OUT distribution although they look
    ordinary to a global threshold. The paper uses 64 to 256 shadows; the demo default is
    8, each trained like the target on as many rows (on the demo's leaky MLP, 8 trainings
    of about two seconds).
    """

    name = "lira"
    needs = Access.SCORES
    shadows: int = param(8, "shadow models (the paper: 64 to 256; online uses those that "
                            "trained on each row and those that did not)", ge=2)
    mode: str = param("online", "online: the IN/OUT likelihood ratio; offline: distance above "
                      "the OUT fit only", choices=("online", "offline"))
    variance: str = param("global", "one variance for all rows (global, the paper's choice "
                          "with few shadows) or one per row", choices=("global", "per-example"))

    def score_rows(self, model: Model, dataset: Dataset, member_rows: np.ndarray,
                   nonmember_rows: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
        shadows = self._shadows(model, dataset, self.shadows)
        x = np.concatenate([dataset.x_train[member_rows], dataset.x_test[nonmember_rows]])
        y = np.concatenate([dataset.y_train[member_rows], dataset.y_test[nonmember_rows]])
        target = logit_confidence(model.predict(x), y)
        observed = np.stack([logit_confidence(s.predict(x), y) for s in shadows.models])
        inside = shadows.inside[:, shadows.population_rows(member_rows, nonmember_rows)]
        scores = self.ratio(target, observed, inside)
        return scores[:len(member_rows)], scores[len(member_rows):]

    def ratio(self, target: np.ndarray, observed: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The membership score of each row from the target's confidences ``(N,)``, the
        shadows' ``(k, N)`` and which shadows trained on each row ``(k, N)``."""
        mu_out, sd_out = _gaussian(observed, ~inside, self.variance)
        if self.mode == "offline":
            return (target - mu_out) / sd_out
        mu_in, sd_in = _gaussian(observed, inside, self.variance)
        return _log_normal(target, mu_in, sd_in) - _log_normal(target, mu_out, sd_out)


def _gaussian(observed: np.ndarray, mask: np.ndarray, variance: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and standard deviation of ``observed`` where ``mask`` holds."""
    counts = mask.sum(axis=0)
    overall = observed[mask].mean() if mask.any() else 0.0
    sums = np.where(mask, observed, 0.0).sum(axis=0)
    mu = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    deviations = np.where(mask, observed - mu, 0.0)
    if variance == "global":
        dof = max(int(mask.sum()) - int((counts > 0).sum()), 1)
        sd = np.full(observed.shape[1], np.sqrt((deviations ** 2).sum() / dof))
    else:
        sd = np.sqrt((deviations ** 2).sum(axis=0) / np.maximum(counts - 1, 1))
        sd = np.where(counts > 1, sd, np.sqrt((deviations ** 2).sum()
                                              / max(int(mask.sum()) - 1, 1)))
    return mu, np.maximum(sd, 1e-6)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


class ShadowMembership(_ShadowAttack):
    """Shadow models: a classifier learns members from shadows' answers to known rows.

    Shokri, Stronati, Song & Shmatikov, 2017, "Membership Inference Attacks against
    Machine Learning Models". The shadows imitate the target (same architecture and
    training recipe, trained on known rows), so their answers to their own training rows
    and to other rows teach an attack model what membership looks like. Here one attack
    model (gradient-boosted trees) reads the served probabilities sorted from the highest,
    the true class's probability and logit-scaled confidence, and whether the answer is
    right, for every population row of every shadow; it then scores the target's answers.
    Shokri et al. train one attack model per class on the raw vector; knowing the true
    label (as they assume for the shadows' data) lets one model serve every class.
    """

    name = "mia-shadow"
    needs = Access.SCORES
    shadows: int = param(4, "shadow models (each a training of the model's recipe)", ge=1)

    def score_rows(self, model: Model, dataset: Dataset, member_rows: np.ndarray,
                   nonmember_rows: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.ensemble import HistGradientBoostingClassifier

        shadows = self._shadows(model, dataset, self.shadows)
        x_all = np.concatenate([dataset.x_train, dataset.x_test])
        y_all = np.concatenate([dataset.y_train, dataset.y_test])
        features = np.concatenate([_features(s.predict(x_all), y_all) for s in shadows.models])
        labels = shadows.inside.reshape(-1)
        from threadpoolctl import threadpool_limits

        x = np.concatenate([dataset.x_train[member_rows], dataset.x_test[nonmember_rows]])
        y = np.concatenate([dataset.y_train[member_rows], dataset.y_test[nonmember_rows]])
        target = _features(model.predict(x), y)
        # One OpenMP thread, so the trees themselves do not depend on the core count. The
        # shadows' scores still do in their last bits (torch sums in thread order), and the
        # trees' quantile bins carry that further than other attacks: on the demo, AUC
        # 0.680 with torch on 2 threads, 0.678 on 1 (LiRA and the thresholds: identical).
        # A logistic regression instead is thread-proof but reaches only 0.60.
        with threadpool_limits(limits=1, user_api="openmp"):
            attack = HistGradientBoostingClassifier(max_iter=100,
                                                    random_state=self.shadow_seed)
            attack.fit(features, labels)
            scores = attack.predict_proba(target)[:, 1]
        return scores[:len(member_rows)], scores[len(member_rows):]


def _features(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    ranked = -np.sort(-p, axis=1)
    true = p[np.arange(len(y)), y][:, None]
    right = (p.argmax(axis=1) == y).astype(np.float64)[:, None]
    return np.hstack([ranked, true, logit_confidence(p, y)[:, None], right])


class LabelOnlyMembership(MembershipAttack):
    """Label-only: members sit farther from the decision boundary, found from labels alone.

    Choquette-Choo, Tramer, Carlini & Papernot, 2021, "Label-Only Membership Inference
    Attacks". A row the model misclassifies scores 0. For the others, the distance to the
    boundary is estimated from labels only: along ``directions`` random unit (L2)
    directions, a bisection of ``steps`` queries finds the smallest step that changes
    the predicted class (capped at ``radius``; inputs clipped to the valid range), and the
    score is the mean over directions. The paper's boundary distance uses HopSkipJump per
    row; random directions estimate the same quantity more coarsely with a fixed query
    count per row: ``1 + directions * (steps + 1)``. Output defenses that perturb or mask
    scores but keep the predicted class (confidence clipping and noise, rounding, top-k)
    leave it untouched; it runs even where only labels are served. On the demo
    (AUC 0.597, advantage 0.17) 64% of members and 48% of non-members keep their class
    within the default radius in every direction: they tie at the top score, so its TPR
    at 1% FPR is 0 by construction (a tie cannot be split by a threshold). A larger
    radius breaks the tie (8: the ties go) without separating better (AUC 0.54).
    """

    name = "mia-label-only"
    needs = Access.LABELS
    directions: int = param(8, "random directions per row", ge=1)
    steps: int = param(8, "bisection queries per direction", ge=1)
    radius: float = param(0.0, "largest L2 step searched (0: a quarter of the input's "
                               "diagonal, sqrt(dims) * range / 4)", ge=0)

    def scores(self, model: Model, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        low, high = model.clip_values
        x = np.asarray(x, dtype=np.float32)
        flat = x.reshape(len(x), -1)
        dims = flat.shape[1]
        radius = self.radius or float(np.sqrt(dims) * (high - low) / 4)
        right = model.labels(x) == y
        u = rng.standard_normal((len(x), self.directions, dims))
        u /= np.linalg.norm(u, axis=2, keepdims=True)
        base = np.repeat(flat[:, None, :], self.directions, axis=1)
        labels = np.repeat(y[:, None], self.directions, axis=1)

        def flips(t: np.ndarray) -> np.ndarray:
            moved = np.clip(base + t[..., None] * u, low, high).astype(np.float32)
            answers = model.labels(moved.reshape(-1, *x.shape[1:]))
            return answers.reshape(len(x), self.directions) != labels

        lo = np.zeros((len(x), self.directions))
        hi = np.full((len(x), self.directions), radius)
        far = ~flips(hi)  # no flip within the radius: the distance is at least the radius
        for _ in range(self.steps):
            mid = (lo + hi) / 2
            flipped = flips(mid)
            hi = np.where(flipped, mid, hi)
            lo = np.where(flipped, lo, mid)
        distance = np.where(far, radius, hi).mean(axis=1)
        return np.where(right, distance, 0.0)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(ShadowMembership)
    register(LiRA)
    register(LabelOnlyMembership)

"""Score- and decision-based evasion attacks: Square, HopSkipJump and one-pixel.

These attacks see only what a served model answers: ``square`` and ``one-pixel`` the
probability vector (``model.predict``), ``hopskipjump`` the predicted label alone
(``model.labels``). So they run against scores-only and labels-only deployments, where
gradient attacks are not applicable: an output defense (``confidence-clip``,
``confidence-noise``) is attacked as it is served, not skipped. The checklist's rule
"score- and decision-based attacks do not beat white-box attacks on the same rows" reads
their numbers beside PGD's.

All three are written here as batched numpy loops over the Model, not taken from ART:
every step sends the candidates of all rows still being attacked to the model in one call
(ART loops over rows in Python: its PixelAttack took 76 s for 50 digits rows, and its
HopSkipJump cannot run on the Model's ART estimator). The randomness comes from the cell's
generator only. ``tests/plugins/test_blackbox.py`` checks Square against ART's
``SquareAttack`` run directly on the same rows, and the one-pixel fitness against a
direct computation.

Black-box attacks pay in queries, so each limits the rows it attacks (``rows``) and the
queries it spends on one row (``max_queries``, or ``popsize`` x ``max_iter`` for the
differential evolution), so that one cell of the default audit stays under a second on the
digits CNN; the outcome reports the queries spent (``queries``), never more than ``rows``
times the per-row budget.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from gauntlet import Access, Attack, EvasionAttack, Model, NotApplicable, hookimpl, param
from gauntlet.plugins.evasion import EPS_HELP, ITERATIVE_SWEEP

#: Square's default budgets: the iterative attacks' (0.05, where nearly every row stands
#: and so spends all its queries, was a third of the attack's time in the demo); 0.1
#: and 0.2 are where it meets the white-box attacks in the checklist and the worst-case
#: column, and 0.3 drives a scores-only defense toward zero.
SQUARE_SWEEP = ITERATIVE_SWEEP

#: Probabilities are floored here before their log is taken (a served score can be 0).
TINY = 1e-30


def margin(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: ``log p_y - max_{j != y} log p_j``, positive while the row is classified
    right. For a softmax this is the logit margin the Square Attack paper minimises, got
    from the served probabilities alone (their logs are the logits up to a shared shift)."""
    logp = np.log(np.maximum(scores.astype(np.float64), TINY))
    at = np.arange(len(y))
    true = logp[at, y].copy()
    logp[at, y] = -np.inf
    return true - logp.max(axis=1)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``shape`` read as (channels, height, width): (H, W) is one channel, (D,) one row."""
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return 1, 1, int(np.prod(shape))


def _refuse_packed(model: Model) -> None:
    """A query attack asks in hundreds of small rounds; a deployment that answers a
    packed batch at a fixed cost (encrypted inference: about 2 s per round, however few
    rows) would make one cell take many minutes, and rounds that depend on the answers
    cannot be packed ahead. Not run there, with the reason."""
    served = model.served
    if served is not None and served.pack > 1:
        raise NotApplicable(
            "a query attack sends hundreds of dependent rounds, and this deployment "
            f"answers each round at the cost of {served.pack} rows (encrypted inference); "
            "its answers equal the plaintext twin's, which white-box attacks cover")


class _QueryAttack(EvasionAttack):
    """Base of the attacks here: they learn only from the answers, round after round."""

    def check(self, model: Model) -> None:
        super().check(model)
        _refuse_packed(model)


class Square(_QueryAttack):
    """Square Attack: random search over square updates at the L-infinity ball's vertices.

    Andriushchenko, Croce, Flammarion and Hein, 2020, "Square Attack: a query-efficient
    black-box adversarial attack via random search" (Algorithm 1 and its L-infinity
    sampling distribution: vertical-stripe initialisation, squares of side
    ``sqrt(p * H * W)`` with one random sign per channel, p halved on the paper's schedule
    relative to the query budget).

    An update is kept when it does not raise the margin of the served scores, taken on
    their log, which for a softmax is the paper's logit margin. The paper keeps strict
    improvements only; keeping ties as well lets the search walk across the plateaus of a
    clipped output (``confidence-clip`` ties every class below its floor), where it would
    otherwise stand still (at eps 0.3 on 100 digits rows: 3% robust accuracy instead of
    17%); unclipped scores have no ties, so there it is the paper's rule. Batched: every
    step sends one candidate per row not yet misclassified to ``model.predict``, and each
    row draws its own square. Scores only, so it attacks scores-only deployments as served.
    """

    name = "square"
    needs = Access.SCORES

    eps: float = param(SQUARE_SWEEP, EPS_HELP, ge=0)
    max_queries: int = param(200, "queries per row, the clean one included (the paper "
                             "runs 10,000; 200 keeps a default cell under a second)",
                             ge=2)
    p_init: float = param(0.8, "initial fraction of the input a square covers (the "
                          "paper's value for MNIST)", gt=0, le=1)
    rows: int = param(100, "test rows to attack, from the first (0: every evaluated row; "
                      "limited to 100 by default to bound the queries)", ge=0)
    batch_size: int = param(0, "rows per generate() call (0: all rows in one call)", ge=0)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        low, high = model.clip_values
        c, h, w = _image_shape(x.shape[1:])
        n, eps = len(x), float(self.eps)
        # ``x`` itself, not a copy: the base reuses this pass's scores as the clean ones.
        loss = margin(model.predict(x), y)
        if eps == 0:
            return x
        x4 = x.reshape(n, c, h, w)
        best = x4.copy()
        idx = np.flatnonzero(loss > 0)  # rows already misclassified are left as they are
        stripes = rng.choice((-eps, eps), size=(len(idx), c, 1, w)).astype(np.float32)
        best[idx] = np.clip(x4[idx] + stripes, low, high)
        loss[idx] = margin(model.predict(best[idx].reshape(len(idx), *x.shape[1:])), y[idx])
        rows_h, cols_w = np.arange(h), np.arange(w)
        for i in range(self.max_queries - 2):
            idx = np.flatnonzero(loss > 0)
            if not idx.size:
                break
            sh, sw = _side(_p_at(self.p_init, i, self.max_queries), h, w)
            k = len(idx)
            top = rng.integers(0, h - sh + 1, size=k)
            left = rng.integers(0, w - sw + 1, size=k)
            window = (((rows_h >= top[:, None]) & (rows_h < (top + sh)[:, None]))[:, :, None]
                      & ((cols_w >= left[:, None]) & (cols_w < (left + sw)[:, None]))
                      [:, None, :])[:, None]  # (k, 1, h, w)
            origin, current = x4[idx], best[idx]
            delta = current - origin
            signs = rng.choice((-eps, eps), size=(k, c, 1, 1)).astype(np.float32)
            cand = np.clip(origin + np.where(window, signs, delta), low, high)
            # As the paper does: draw the signs again where the square changes nothing.
            for _ in range(10):
                same = np.abs(cand - current).reshape(k, -1).max(axis=1) < 1e-7
                if not same.any():
                    break
                signs[same] = rng.choice((-eps, eps), size=(int(same.sum()), c, 1, 1))
                cand[same] = np.clip(origin[same] + np.where(window[same], signs[same],
                                                             delta[same]), low, high)
            new = margin(model.predict(cand.reshape(k, *x.shape[1:])), y[idx])
            better = new <= loss[idx]
            best[idx[better]] = cand[better]
            loss[idx[better]] = new[better]
        return best.reshape(x.shape)


def _p_at(p_init: float, i: int, budget: int) -> float:
    """The paper's schedule for the fraction p at step ``i`` of ``budget`` queries: halved
    at 10, 50, 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000 of 10,000 (rescaled)."""
    at = int(i / budget * 10000)
    for k, edge in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if at <= edge:
            return p_init / 2**k
    return p_init / 2**9


def _side(p: float, h: int, w: int) -> tuple[int, int]:
    """Height and width of a square covering about ``p`` of an h x w input (a segment for
    one-row inputs), at least 1 and, as in the paper, less than the side where it can."""
    area = p * h * w
    if h == 1:
        return 1, max(1, min(round(area), w - 1 if w > 1 else 1))
    s = max(1, min(round(math.sqrt(area)), min(h, w) - 1))
    return s, s


#: The fewest boundary samples HopSkipJump spends on one gradient estimate.
MIN_EVALS = 10
#: Factors by which HopSkipJump scales a row's perturbation until its answer holds.
PUSH = (1.0, 1.1, 1.25, 1.5, 2.0, 3.0)


class HopSkipJump(_QueryAttack):
    """HopSkipJump: the smallest L2 change that flips a row, found from labels alone.

    Chen, Jordan and Wainwright, 2020, "HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack" (Algorithm 2, untargeted, L2; gamma = 1, the paper's
    geometric step-size search and its schedule of ``init_evals * sqrt(t)`` boundary
    samples).

    From a misclassified start, it estimates the gradient of the decision boundary from
    labels, steps along it and binary-searches back to the boundary. Run as a
    minimal-perturbation L2 attack, as the paper evaluates it: no eps, each row ends at the
    closest misclassified point found, so the outcome's per-row ``l2`` is the distance the
    attack needed and the report draws accuracy against an L2 budget from it. A row with no
    misclassified start (uniform noise tried ``init_tries`` times) or already misclassified
    is returned unchanged. Batched: all rows move in step, and each boundary sample,
    step-size trial and bisection step is one ``model.labels`` call for every row still
    being attacked. A row stops when its budget cannot pay for another iteration (the last
    one takes fewer boundary samples if that is all it can pay). Against a randomised
    deployment the boundary moves at every query, so an answer found once may not hold: each
    row's answer must be misclassified ``confirm`` times in a row, else it is pushed further
    from the clean row (x1.1, x1.25, ... x3) until it is, a step the paper (which assumes a
    deterministic model) does not need.
    """

    name = "hopskipjump"
    needs = Access.LABELS
    minimal = True
    norm = ""

    max_queries: int = param(1000, "queries per row, the clean one included (the paper "
                             "reports 1,000 to 25,000)", ge=50)
    init_evals: int = param(100, "boundary samples of the first gradient estimate, "
                            "init_evals * sqrt(t) at iteration t (the paper's 100)",
                            ge=2)
    init_tries: int = param(20, "uniform-noise draws to find a misclassified start", ge=1)
    confirm: int = param(3, "queries that must all answer misclassified before a row's "
                         "answer is returned (against randomised deployments)", ge=1)
    rows: int = param(25, "test rows to attack, from the first (0: every evaluated row; "
                      "limited to 25 by default: a row costs up to max_queries queries)",
                      ge=0)
    batch_size: int = param(0, "rows per generate() call (0: all rows in one call)", ge=0)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        low, high = model.clip_values
        n, shape = len(x), x.shape[1:]
        d = int(np.prod(shape))
        theta = 1.0 / (d * math.sqrt(d))  # gamma / d^(3/2): the bisection's tolerance
        steps = math.ceil(math.log2(1.0 / theta))
        spent = np.zeros(n, np.int64)
        budget = self.max_queries - self.confirm * len(PUSH)  # kept for the last check

        def fooled(rows: np.ndarray, points: np.ndarray) -> np.ndarray:
            """Whether the model misclassifies ``points`` (each belongs to a row)."""
            np.add.at(spent, rows, 1)
            return np.asarray(model.labels(points.reshape(-1, *shape).astype(np.float32))
                              != y[rows])

        xf = x.reshape(n, d).astype(np.float64)
        # ``x`` itself, not a copy: the base reuses this pass's answers as the clean ones.
        spent += 1
        todo = model.labels(x) == y
        start = xf.copy()
        found = np.zeros(n, bool)
        for _ in range(self.init_tries):
            idx = np.flatnonzero(todo & ~found & (spent + steps + 1 < budget))
            if not idx.size:
                break
            noise = rng.uniform(low, high, size=(len(idx), d))
            ok = fooled(idx, noise)
            start[idx[ok]], found[idx[ok]] = noise[ok], True
        live = np.flatnonzero(found)
        current = xf.copy()
        current[live] = self._bisect(fooled, live, xf[live], start[live], steps)
        dist = np.linalg.norm(current - xf, axis=1)
        best, best_dist = current.copy(), dist.copy()
        t = 0
        while True:
            t += 1
            # Boundary samples: the paper's schedule, cut to what every row left can pay
            # besides one step trial and the bisection (at least MIN_EVALS).
            left = budget - spent - 1 - steps
            idx = np.flatnonzero(found & (left >= MIN_EVALS))
            if not idx.size:
                break
            evals = min(int(self.init_evals * math.sqrt(t)), int(left[idx].min()))
            k, here, origin = len(idx), current[idx], xf[idx]
            delta = (np.full(k, 0.1 * (high - low)) if t == 1
                     else math.sqrt(d) * theta * dist[idx])
            u = rng.standard_normal((k, evals, d))
            u /= np.linalg.norm(u, axis=2, keepdims=True)
            probes = np.clip(here[:, None] + delta[:, None, None] * u, low, high)
            u = (probes - here[:, None]) / delta[:, None, None]
            phi = np.where(fooled(np.repeat(idx, evals), probes), 1.0, -1.0).reshape(k, evals)
            mean = phi.mean(axis=1, keepdims=True)
            phi = np.where(np.abs(mean) == 1.0, phi, phi - mean)  # the paper's baseline
            grad = (phi[:, :, None] * u).mean(axis=1)
            grad /= np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)
            # Geometric step-size search: halve until the step lands misclassified.
            step = dist[idx] / math.sqrt(t)
            moved = here.copy()
            pending = np.arange(k)
            while pending.size:
                pending = pending[spent[idx[pending]] + steps < budget]
                if not pending.size:
                    break
                trial = np.clip(here[pending] + step[pending, None] * grad[pending], low, high)
                ok = fooled(idx[pending], trial)
                moved[pending[ok]] = trial[ok]
                pending = pending[~ok]
                step[pending] /= 2
            current[idx] = self._bisect(fooled, idx, origin, moved, steps)
            dist[idx] = np.linalg.norm(current[idx] - origin, axis=1)
            closer = idx[dist[idx] < best_dist[idx]]
            best[closer], best_dist[closer] = current[closer], dist[closer]
        best[found] = self._confirmed(fooled, np.flatnonzero(found), xf[found], best[found],
                                      low, high)
        return best.reshape(x.shape).astype(np.float32)

    def _confirmed(self, fooled: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   idx: np.ndarray, origin: np.ndarray, adv: np.ndarray, low: float,
                   high: float) -> np.ndarray:
        """Each row's answer, pushed out by the first factor of :data:`PUSH` at which
        ``confirm`` repeated queries all answer misclassified (a deterministic model
        confirms at once; a randomised one moves the boundary at every query)."""
        out = adv.copy()
        pending = np.arange(len(idx))
        for factor in PUSH:
            if not pending.size:
                break
            trial = np.clip(origin[pending] + factor * (adv[pending] - origin[pending]),
                            low, high)
            votes = fooled(np.repeat(idx[pending], self.confirm),
                           np.repeat(trial, self.confirm, axis=0))
            held = votes.reshape(len(pending), self.confirm).all(axis=1)
            out[pending[held]] = trial[held]
            pending = pending[~held]
        return out

    @staticmethod
    def _bisect(fooled: Callable[[np.ndarray, np.ndarray], np.ndarray], idx: np.ndarray,
                origin: np.ndarray, far: np.ndarray, steps: int) -> np.ndarray:
        """Binary search on the segment from each clean row to its misclassified point;
        returns the misclassified end of the final interval (all rows in step)."""
        lo, hi = np.zeros(len(idx)), np.ones(len(idx))
        for _ in range(steps if len(idx) else 0):
            mid = (lo + hi) / 2
            ok = fooled(idx, (1 - mid[:, None]) * origin + mid[:, None] * far)
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
        return (1 - hi[:, None]) * origin + hi[:, None] * far


class OnePixel(_QueryAttack):
    """One-pixel attack: differential evolution over the positions and values of a few pixels.

    Su, Vargas and Sakurai, 2019, "One Pixel Attack for Fooling Deep Neural Networks"
    (DE/rand/1 with F = 0.5 and no crossover; a candidate is ``pixels`` tuples of
    (row, column, one value per channel); a child replaces its parent when its fitness is
    no worse; a row stops once its best candidate is misclassified).

    The fitness is the served probability of the true class. Not an eps-ball
    attack: it changes at most ``pixels`` pixels (every channel of each) by any amount
    within the valid range, so its L0 is at most ``pixels`` x channels and it has no eps.
    Batched: each generation sends the whole population of every row still being attacked
    to ``model.predict`` in one call. Inputs must be images shaped (C, H, W).
    """

    name = "one-pixel"
    needs = Access.SCORES
    norm = ""

    pixels: int = param((1, 3, 5), "pixels the attack may change (all channels of each)",
                        ge=1)
    popsize: int = param(10, "candidates per row (the paper uses 400)", ge=4)
    max_iter: int = param(20, "generations of differential evolution (the paper's 100)",
                          ge=0)
    rows: int = param(40, "test rows to attack, from the first (0: every evaluated row; "
                      "limited to 40 by default: a row costs popsize x (max_iter + 1) "
                      "queries)", ge=0)
    batch_size: int = param(0, "rows per generate() call (0: all rows in one call)", ge=0)

    #: The paper's mutation factor.
    F = 0.5

    def check(self, model: Model) -> None:
        super().check(model)
        if len(model.input_shape) != 3:
            raise NotApplicable(f"changes pixels of images shaped (C, H, W); this model's "
                                f"inputs are shaped {model.input_shape}")

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        low, high = model.clip_values
        c, h, w = x.shape[1:]
        # ``x`` itself, not a copy: the base reuses this pass's scores as the clean ones.
        idx = np.flatnonzero(model.predict(x).argmax(axis=1) == y)
        out = x.copy()
        if not idx.size:
            return out
        lower = np.array([0.0, 0.0] + [low] * c)
        upper = np.array([h, w] + [high] * c, dtype=np.float64)
        upper[:2] -= 1e-6  # positions are floored: keep them inside the image
        origin, truth = x[idx], y[idx]
        pop = lower + rng.random((len(idx), self.popsize, self.pixels, 2 + c)) * (upper - lower)
        fit, won = fitness(model, origin, truth, pop)
        for _ in range(self.max_iter):
            go = np.flatnonzero(~won.any(axis=1))
            if not go.size:
                break
            a, p = len(go), self.popsize
            # r1, r2, r3: distinct members other than the parent, per row and member.
            order = rng.random((a, p, p))
            order[:, np.arange(p), np.arange(p)] = np.inf
            r = np.argsort(order, axis=2)[:, :, :3]
            sel = pop[go[:, None, None], r]  # (a, p, 3, pixels, 2 + c)
            child = np.clip(sel[:, :, 0] + self.F * (sel[:, :, 1] - sel[:, :, 2]),
                            lower, upper)
            f, wn = fitness(model, origin[go], truth[go], child)
            keep = f <= fit[go]
            pop[go] = np.where(keep[:, :, None, None], child, pop[go])
            fit[go] = np.where(keep, f, fit[go])
            won[go] = np.where(keep, wn, won[go])
        # Each row's best: a misclassified candidate if any, else the lowest fitness.
        pick = np.argmin(np.where(won, -1.0, fit), axis=1)
        out[idx] = apply_pixels(origin, pop[np.arange(len(idx)), pick][:, None])[:, 0]
        return out


def apply_pixels(x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Images with candidate pixels set: ``x`` (A, C, H, W), ``candidates``
    (A, P, pixels, 2 + C) of (row, column, value per channel); returns (A, P, C, H, W).
    Positions are floored; where two pixels of a candidate coincide, the last one wins."""
    a, p, k = candidates.shape[:3]
    imgs = np.repeat(x[:, None], p, axis=1).astype(np.float32)
    pos = candidates[..., :2].astype(np.int64)
    ai = np.broadcast_to(np.arange(a)[:, None, None], (a, p, k))
    pi = np.broadcast_to(np.arange(p)[None, :, None], (a, p, k))
    imgs[ai, pi, :, pos[..., 0], pos[..., 1]] = candidates[..., 2:]
    return imgs


def fitness(model: Model, x: np.ndarray, y: np.ndarray,
            candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The served probability of the true class for each candidate of each row, and
    whether the candidate is misclassified: both (A, P), from one ``model.predict``."""
    a, p = candidates.shape[:2]
    scores = model.predict(apply_pixels(x, candidates).reshape(a * p, *x.shape[1:]))
    truth = np.repeat(y, p)
    prob = scores[np.arange(a * p), truth].reshape(a, p).astype(np.float64)
    return prob, (scores.argmax(axis=1) != truth).reshape(a, p)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(Square)
    register(HopSkipJump)
    register(OnePixel)

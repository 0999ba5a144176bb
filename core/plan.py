"""Plan an audit: the selected defenses x (clean + the selected attacks), every point of
each parameter sweep, as a list of cells; and the seed each cell draws from.

Planning constructs every parameter point once, so an unknown name, an unknown
parameter or a value out of its bounds is a ConfigError before anything runs.

Every attack cell is seeded from the audit seed and its attack point, never its
defense: each defense faces the same random draws of an attack (common random numbers),
so differences between rows are the defenses' doing, and a poisoned training set is the
same under every defense. A defense is seeded from its own point. Results never depend
on cell order.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gauntlet.attack import Attack, Family
from gauntlet.defense import Defense
from gauntlet.errors import ConfigError
from gauntlet.model import Access, measure
from gauntlet.outcome import CleanOutcome
from gauntlet.params import describe_point, params_key

if TYPE_CHECKING:
    import numpy as np

    from gauntlet.dataset import Dataset
    from gauntlet.model import Model
    from gauntlet.registry import Registry


#: Test rows (the first ones) the clean cell's live checks look at.
CHECK_ROWS = 32
#: Two passes over the same inputs whose probabilities differ by more than this mean the
#: deployment is randomised (float round-off and CKKS decryption stay far below it).
SCORE_TOLERANCE = 1e-3


class Clean(Attack):
    """No attack: the defended model on unmodified test data (the baseline column).

    It also takes the evaluation checklist's live measurements of the deployment
    (:func:`live_checks`), which :func:`gauntlet.checklist.checklist` reads from the
    cell's artifacts.
    """

    name = "clean"
    family = Family.BASELINE
    needs = Access.LABELS
    outcome = CleanOutcome

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> CleanOutcome:
        # The core's measurement, not an attacker's queries: uncounted, and one-hot for a
        # labels-only deployment (whose scores no one may see).
        proba = measure(model, dataset.x_test)
        # After the measurement, so a randomised defense's draws for it are unchanged; before
        # the facts, so a rehearsal (which stops at the facts) sees the rows it predicts.
        checks = live_checks(model, dataset.x_test, dataset.y_test)
        facts = model.deployment_facts(dataset.x_test, proba)
        return CleanOutcome(y_true=dataset.y_test, proba=proba, facts=facts, checks=checks,
                            rejected=model.rejects(dataset.x_test),
                            labels_only=model.access < Access.SCORES)


def live_checks(model: Model, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """What the evaluation checklist measures of a deployment itself, on the first
    :data:`CHECK_ROWS` rows of ``x``, without counting queries (Carlini et al., 2019, "On
    Evaluating Adversarial Robustness", and AutoAttack's checks):

    ``gradients`` (None without gradient access): per row of the sample, is the input
    gradient of the loss, through the deployment's gradient stand-ins (BPDA) as every
    gradient attack sees it, finite, and is it non-zero? ``{"rows", "finite",
    "nonzero", "median_norm"}``, or ``{"rows", "error"}`` when it cannot be computed.

    ``repeat``: the sample predicted twice: on how many rows do the labels agree, and how
    far apart are the probabilities (a randomised defense moves them even when no label
    changes)? ``{"rows", "agree", "max_score_change", "tolerance"}``.
    """
    import numpy as np

    from gauntlet.model import _scores

    k = min(CHECK_ROWS, len(x))
    xs = np.ascontiguousarray(x[:k], dtype=np.float32)
    ys = np.asarray(y[:k], dtype=np.int64)
    checks: dict[str, Any] = {"gradients": None}
    if model.access >= Access.GRADIENTS and k:
        spent = model.queries
        try:
            grad = np.asarray(model.loss_gradient(xs, ys), dtype=np.float64).reshape(k, -1)
            finite = np.isfinite(grad).all(axis=1)
            nonzero = (np.where(np.isfinite(grad), grad, 0.0) != 0).any(axis=1)
            # loss_gradient differentiates the mean loss: times k, each row's own loss
            norms = np.linalg.norm(np.where(np.isfinite(grad), grad, 0.0), axis=1) * k
            checks["gradients"] = {"rows": k, "finite": int(finite.sum()),
                                   "nonzero": int((finite & nonzero).sum()),
                                   "median_norm": float(np.median(norms))}
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is its finding
            checks["gradients"] = {"rows": k, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            model.queries = spent  # the evaluator's look, not an attacker's queries
    try:
        first, second = _scores(model, xs), _scores(model, xs)
        change = float(np.abs(first.astype(np.float64) - second).max()) if k else 0.0
        checks["repeat"] = {"rows": k, "agree": int((first.argmax(1) == second.argmax(1)).sum()),
                            "max_score_change": change, "tolerance": SCORE_TOLERANCE}
    except Exception as exc:  # noqa: BLE001
        checks["repeat"] = {"rows": k, "error": f"{type(exc).__name__}: {exc}"}
    return checks


@dataclasses.dataclass(frozen=True)
class Selection:
    """A plugin chosen for an audit, with the user's parameter overrides."""

    name: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (defense point, attack point) of the plan.

    The classes are those the registry holds; everything else is plain data, so a cell
    pickles to a worker wherever its plugin classes can be imported there.
    """

    defense: type[Defense]
    defense_params: dict[str, Any]
    defense_point: str
    attack: type[Attack]
    attack_params: dict[str, Any]
    attack_point: str
    #: Why the cell is not run (the defense skips this point of a poisoning sweep:
    #: :meth:`Defense.skips_poisoning`); not part of its id.
    skipped: str = ""

    @property
    def defense_key(self) -> str:
        return f"{self.defense.name}{params_key(self.defense_params)}"

    @property
    def attack_key(self) -> str:
        return f"{self.attack.name}{params_key(self.attack_params)}"

    @property
    def id(self) -> str:
        return f"{self.defense_key}|{self.attack_key}"

    @property
    def label(self) -> str:
        d = self.defense.name + (f" ({self.defense_point})" if self.defense_point else "")
        a = self.attack.name + (f" ({self.attack_point})" if self.attack_point else "")
        return f"{d} / {a}"

    @property
    def attack_seed_key(self) -> str:
        """What an attack cell's seed derives from: its attack point, not its defense."""
        name = self.attack.name
        if name in _SEED_POINTS and self.attack.__module__.startswith("gauntlet.plugins."):
            return f"attack|{name}{params_key(_seed_point(name, self.attack_params))}"
        return "attack|" + self.attack_key

    @property
    def defense_seed_key(self) -> str:
        """What the build of a cell's defended model is seeded from."""
        return "defense|" + self.defense_key


# Built-in attacks whose parameters were renamed or added in issue 6 derive their seeds
# from their point under the names they had before, so an audit run again with the same
# seed gives the numbers it gave then (tests/data/demo_metrics.json holds them):
# {attack: (the parameters translated, their point as it was)}. A parameter added since
# joins the key under its own name, so it still moves the seed.
_Point = Mapping[str, Any]
_SEED_POINTS: dict[str, tuple[tuple[str, ...], Callable[[_Point], dict[str, Any]]]] = {
    "fgsm": (("backend", "batch_size", "eps", "rows"),
             lambda p: {"backend": p["backend"], "batch_size": p["batch_size"],
                        "eps": p["eps"], "samples": p["rows"]}),
    # pgd's batch_size was ART's then; it is a constant of the plugin now
    "pgd": (("batch_size", "eps", "max_iter", "num_random_init", "rows", "step_ratio"),
            lambda p: {"batch_size": 256, "eps": p["eps"], "max_iter": p["max_iter"],
                       "num_random_init": p["num_random_init"], "samples": p["rows"],
                       "step_ratio": p["step_ratio"]}),
    "noise": (("batch_size", "eps", "rows"), lambda p: {"eps": p["eps"], "samples": p["rows"]}),
    "mia-threshold": (("members",), lambda p: {"samples": p["members"]}),
    "trash-bucket": (("probes",), lambda p: {"samples": p["probes"]}),
}


def _seed_point(name: str, point: _Point) -> _Point:
    known, before = _SEED_POINTS[name]
    return {**before(point), **{k: v for k, v in point.items() if k not in known}}


def plan(registry: Registry, defenses: Sequence[Selection],
         attacks: Sequence[Selection]) -> list[Cell]:
    """Expand the selections into cells: every defense point x (clean + every attack
    point), defense by defense. A plugin selected several times runs the union of its
    sweeps (:func:`_grid`). Raise ConfigError for a plugin selected twice with the same
    parameters, an unknown name or parameter, or a bad value, before anything runs."""
    for kind, chosen in (("defense", defenses), ("attack", attacks)):
        seen = [(s.name, params_key(s.params)) for s in chosen]
        twice = sorted({n for n, k in seen if seen.count((n, k)) > 1})
        if twice:
            raise ConfigError(f"{kind} {twice[0]!r} is selected more than once with the "
                              "same parameters")
    defense_grid = _grid(registry, "defense", defenses)
    attack_grid: list[tuple[Any, dict[str, Any], str]] = [(Clean, {}, "")]
    attack_grid += _grid(registry, "attack", attacks)
    for cls, point, _ in defense_grid + attack_grid:
        cls(**point)  # runs the plugin's own cross-parameter checks (validate())
    # Where each attack's sweep starts in attack_grid, and how many points it has.
    sweeps: dict[type[Attack], list[int]] = {}
    for i, (cls, _, _) in enumerate(attack_grid):
        sweeps.setdefault(cls, []).append(i)
    cells = []
    for d, dp, dl in defense_grid:
        defense = d(**dp)
        for i, (a, ap, al) in enumerate(attack_grid):
            skipped = ""
            if a.family is Family.POISONING:
                where = sweeps[a]
                skipped = defense.skips_poisoning(where.index(i), len(where)) or ""
            cells.append(Cell(d, dp, dl, a, ap, al, skipped))
    return cells


def _grid(registry: Registry, kind: str,
          chosen: Sequence[Selection]) -> list[tuple[Any, dict[str, Any], str]]:
    """Every point of each selected plugin, in selection order. A plugin selected several
    times (several sweeps) runs the union of their points, each once, labelled by every
    parameter that varies across that union (so two sweeps' points never share a label)."""
    by_name: dict[str, list[Selection]] = {}
    for s in chosen:
        by_name.setdefault(s.name, []).append(s)
    grid = []
    for name, selections in by_name.items():
        cls = registry.get(kind, name)
        if len(selections) == 1:
            grid += [(cls, p, label) for p, label in cls.grid(selections[0].params)]
            continue
        points: dict[str, dict[str, Any]] = {}
        for s in selections:
            for p, _ in cls.grid(s.params):
                points.setdefault(params_key(p), p)
        union = list(points.values())
        swept = tuple(k for k in union[0] if len({params_key({k: p[k]}) for p in union}) > 1)
        grid += [(cls, p, describe_point(p, swept)) for p in union]
    return grid


def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed for ``key`` (a cell's attack or defense seed key) in an audit."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1

"""The extraction family's base: the plugin writes ``steal``, the base does the rest.

Model theft: an attacker who can only query the deployed model trains a substitute that
copies it. :class:`ExtractionAttack` hands the plugin the model, a pool of unlabelled
in-distribution inputs (the training split's inputs; labels are what the theft must
query for) and a query budget; the plugin returns its substitute
(:meth:`ExtractionAttack.steal`). The base holds the theft to its budget with the
Model's own query counter, then compares victim and substitute on the test rows, which
the attacker never saw.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.errors import GauntletError
from gauntlet.model import Access, measure, softmax
from gauntlet.outcome import ExtractionOutcome
from gauntlet.params import param

if TYPE_CHECKING:
    import torch

    from gauntlet.dataset import Dataset
    from gauntlet.model import Model


class BudgetExceeded(GauntletError):
    """An extraction attack sent the victim more rows than its query budget allows."""


class SubstituteError(GauntletError):
    """``steal`` returned something that does not map inputs to logits."""


class ExtractionAttack(Attack):
    """Base of model-extraction attacks: subclasses implement :meth:`steal` only.

    Set ``name``, ``needs`` (``Access.LABELS``, the default, for a theft that reads the
    victim's answers only; ``SCORES`` if it reads probabilities), the docstring and the
    parameters; ``budget`` is declared here.
    """

    family = Family.EXTRACTION
    needs = Access.LABELS
    outcome = ExtractionOutcome

    budget: int = param(1000, "most rows the theft may send to the victim", ge=1)

    #: Small JSON-able facts ``steal`` records for the report (which answers it read,
    #: rounds run); reset by :meth:`run` before each theft and kept in the outcome.
    notes: dict[str, Any]

    def steal(self, model: Model, pool: np.ndarray, budget: int,
              rng: np.random.Generator) -> torch.nn.Module:
        """Return a substitute: a torch module mapping ``(N, *input_shape)`` float32 to
        logits ``(N, n_classes)``.

        :param model: the victim as deployed; every row sent to it counts against the
            budget (``model.labels(x)``, or ``model.predict(x)`` with scores access).
        :param pool: unlabelled in-distribution inputs the attacker holds (read-only);
            querying all of them may exceed the budget.
        :param budget: the most rows the theft may send to the victim; spending more is
            an error, not a stronger result.
        :param rng: the cell's generator; draw all randomness from it (torch's global
            generator is also seeded per cell, for training the substitute).

        Facts for the report go in ``self.notes`` (a fresh dict per run), e.g.
        ``self.notes["answers"] = "scores"``; the outcome keeps them.
        """
        raise NotImplementedError

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> ExtractionOutcome:
        self.check(model)
        pool = dataset.x_train.view()
        pool.flags.writeable = False  # steal() must not change the dataset
        before = model.queries
        self.notes = {}
        substitute = self.steal(model, pool, self.budget, rng)
        spent = model.queries - before
        if spent > self.budget:
            raise BudgetExceeded(f"{self.owner()}: sent {spent} rows to the victim, over "
                                 f"its budget of {self.budget}")
        x_test = np.ascontiguousarray(dataset.x_test, dtype=np.float32)
        return ExtractionOutcome(
            y_true=dataset.y_test, proba_victim=measure(model, x_test),
            proba_substitute=self._substitute_scores(substitute, x_test, model),
            queries=spent, rows=np.arange(len(x_test), dtype=np.int64),
            notes=dict(self.notes))

    def _substitute_scores(self, substitute: object, x: np.ndarray, model: Model) -> np.ndarray:
        """The substitute's probabilities on ``x``, or SubstituteError naming the attack."""
        import torch

        owner = self.owner()
        if not isinstance(substitute, torch.nn.Module):
            raise SubstituteError(f"{owner}: steal() returned {type(substitute).__name__}, "
                                  "not a torch.nn.Module")
        substitute.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(x), model.batch_size):
                z = substitute(torch.from_numpy(x[start:start + model.batch_size]))
                out.append(z.detach().float().cpu().numpy())
        logits = np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)
        if logits.shape != (len(x), model.n_classes):
            raise SubstituteError(f"{owner}: the substitute returned shape {logits.shape} for "
                                  f"{len(x)} inputs; expected logits shaped "
                                  f"({len(x)}, {model.n_classes})")
        if not np.isfinite(logits).all():
            raise SubstituteError(f"{owner}: the substitute returned non-finite logits")
        return softmax(logits)

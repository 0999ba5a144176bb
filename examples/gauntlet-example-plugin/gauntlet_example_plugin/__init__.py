"""An example Gauntlet plugin: a box-blur evasion attack that needs labels only.

Install it next to Gauntlet (``pip install ./examples/gauntlet-example-plugin``) and the
attack ``box-blur`` appears in ``gauntlet plugins`` and as a column of every audit.
"""
from __future__ import annotations

import numpy as np

from gauntlet import Access, Attack, EvasionOutcome, Family, hookimpl


class BoxBlur(Attack):
    """Blurs each image with a k x k box filter, blended with strength alpha.

    A common corruption, as in Hendrycks & Dietterich, 2019, "Benchmarking Neural Network
    Robustness to Common Corruptions and Perturbations".
    """

    name = "box-blur"
    family = Family.EVASION
    needs = Access.LABELS  # the attacker only looks at predicted labels
    outcome = EvasionOutcome
    params = {"alpha": (0.5, 1.0), "k": 3}

    def run(self, model, dataset, rng):
        x = dataset.x_test
        if x.ndim != 4:  # images only: (N, C, H, W)
            from gauntlet import NotApplicable
            raise NotApplicable("box-blur needs image data shaped (N, C, H, W)")
        pad = self.k // 2
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
        h, w = x.shape[2:]
        blurred = sum(padded[:, :, i:i + h, j:j + w]
                      for i in range(self.k) for j in range(self.k)) / self.k ** 2
        adv = ((1 - self.alpha) * x + self.alpha * blurred).astype(np.float32)
        return EvasionOutcome(y_true=dataset.y_test, proba=model.predict(adv),
                              proba_clean=model.predict(x),
                              linf=float(np.abs(adv - x).max(initial=0.0)))


@hookimpl
def register_attacks(register):
    register(BoxBlur)

"""Poison-finding defenses: two filters of the training set and a run-time trigger detector.

The filters are :class:`gauntlet.PoisonFilter` s (stage ``training``): they read the
activations of the model trained on the training set as the deployer has it, remove the
rows that look poisoned, and the base re-trains on the rest. In a poisoning cell the core
builds them on the attacker's set and scores the removed rows against the poisoned ones
(``detection_precision``, ``detection_recall``). STRIP is a detector (stage
``detector``): it leaves the classifier as it is and rejects inputs at run time.

Design choices, and why
-----------------------
* ``activation-clustering`` (Chen et al., 2018) splits each class's penultimate
  activations (:meth:`gauntlet.Model.features`), reduced by PCA, into two clusters. The
  paper's k-means on 10 ICA components with its relative-size rule (the smaller cluster
  is poison when it holds under 35% of the class) finds nothing of this project's default
  backdoor on digits: a 10% all-to-one backdoor puts 135 poisoned rows into a target
  class of 133 clean ones, so the poison is half of that class, never the small cluster,
  and k-means cuts the poison (nine source digits, about twice as spread as the clean
  zeros) in two, leaving 30% of it with the clean rows. So, measured on digits:

  - the clusters are a two-component Gaussian mixture with a variance per cluster and
    per dimension (k-means is the special case of one shared round variance), on 20 PCA
    components: it put all of the poison in one cluster for every backdoor seed and
    fraction tried (2%, 5%, 10%);
  - a class is split only when two clusters explain its activations much better than
    one: the drop in BIC per row (``separation``, default 1) was 2.4 to 3.6 for the
    target class and at most 0.5 for every clean class of six models (the paper's
    silhouette check did not separate them: the clean classes 1 and 9 have real
    sub-styles whose 2-means silhouette, about 0.4, is above the target class's);
  - the removed cluster is the one whose rows the model places more confidently in some
    other class (``analysis="reclassification"``): Chen et al.'s exclusionary
    reclassification asks whether a cluster's rows would be read as another class once
    their own label no longer supports them; relabelled poison (a mixture backdoor, a
    label flip) is other classes' inputs, so the model's choice among the classes other
    than the label is confident for it and diffuse for the class's own inputs. This reads
    that answer off the model's softmax over the other classes instead of re-training
    once per cluster. ``analysis="size"`` is the paper's relative-size rule on the same
    clusters (for data where the poison is a minority of its class). With two classes
    there is no choice among the other classes, and ``size`` is used.

* ``spectral-signatures`` (Tran, Li and Madry, 2018) is the paper's method as written:
  per class, the centred penultimate activations, their top right singular vector, each
  row's squared projection on it, and the top ``1.5 * expected_fraction`` of the class
  (rounded) removed. It assumes the poison is a small share of its class; on the default
  digits backdoor it is half of the target class, where the two groups project
  symmetrically and the scores no longer single out the poison (see the numbers below).

* ``strip`` (Gao et al., 2019) superimposes each input with ``overlays`` training images
  and rejects it when the mean Shannon entropy of the model's predictions over those
  images is low: a trigger keeps forcing its class whatever is drawn over it, a clean
  input's class is lost among the overlays. The superimposition is the paper's (image
  plus overlay, clipped to the valid range: ``superimpose="add"``); their average
  (``"blend"``) halves the trigger's contrast and caught 5% of the triggered digits. The
  threshold is the paper's, a normal distribution fitted to the entropies of
  ``calibration`` training rows and cut at its ``frr`` quantile, but located and scaled
  by the median and the scaled median absolute deviation (``threshold_fit=
  "robust-normal"``): the deployer's training rows include the poisoned ones, whose
  near-zero entropies drag a mean and a standard deviation (26% caught) or an empirical
  quantile (6%) down toward zero. 100 overlays by default: on 8x8 digits many overlays
  ink the patch's corner and wipe the trigger out, so the rate depends on the draw (over
  five draws of overlays and calibration rows, 6-64% caught with 20 overlays, 62-99%
  with 100). The detector queries the model it wraps (counted
  there, never on the deployment an attacker queries) and needs its probabilities only.

Measured on digits (the built-in CNN, seed 0, every row; the default backdoor puts a 3x3
noise patch on 10% of the training rows, all relabelled 0; label-flip at 0.3). Poisoned
accuracy is on the clean test rows; undefended: clean 97.8%, backdoor 97.6% with 99.5%
backdoor success, label-flip 95.1%.

=======================  ========  ==============  ==============  ==========  ========
defense                  clean     backdoor: P/R   backdoor        label-flip  label-
                         accuracy  (STRIP: DR/FRR) success, acc.   P/R         flip acc.
=======================  ========  ==============  ==============  ==========  ========
activation-clustering    97.8%     92% / 100%      0%, 96.7%       85% / 88%   92.4%
spectral-signatures      96.0%     20% / 30%       87%, 94.9%      81% / 41%   94.7%
strip                    97.8%     97% / 2.9%      99.5%, 97.6%    -- / 5.3%   95.1%
=======================  ========  ==============  ==============  ==========  ========

Activation clustering with the paper's size rule (``analysis="size"``) removes nothing
of the backdoor; without the separation test (``separation=0``) it removes 117 clean
rows and none of the poison. Spectral signatures inside its regime (``fraction=0.01``: 13
poisoned rows, 9% of class 0) finds 62% of them and the backdoor's success falls from 52%
to 9%. STRIP leaves the classifier as it is: its backdoor success is the undefended one,
beside the share of triggered inputs it turns away.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from gauntlet import (
    Access,
    Dataset,
    Defense,
    Model,
    NotApplicable,
    PoisonFilter,
    Stage,
    hookimpl,
    param,
)
from gauntlet.model import softmax

if TYPE_CHECKING:
    import torch

#: A class with fewer training rows than this is left as it is: too few to split in two.
MIN_ROWS = 10


def _classes(y: np.ndarray, n_classes: int) -> Iterator[tuple[int, np.ndarray]]:
    """Each class with the indices of its training rows, in class order."""
    for c in range(n_classes):
        yield c, np.flatnonzero(y == c)


class ActivationClustering(PoisonFilter):
    """Activation clustering: split each class's activations in two, remove the poison.

    Chen et al., 2018, "Detecting Backdoor Attacks on Deep Neural Networks by Activation
    Clustering". See the module docstring for what is kept from the paper and why.
    """

    name = "activation-clustering"
    in_default_audit = False  # a poisoning study: name it (examples/poison-filters.toml)

    dims: int = param(20, "PCA components of each class's penultimate activations that "
                      "are clustered (at most the rows and features there are)", ge=1)
    separation: float = param(1.0, "split a class only when two Gaussian clusters beat "
                              "one by more than this drop in BIC per row (0: every "
                              "class split, as the paper)", ge=0)
    analysis: str = param("reclassification", "which cluster of a split class is "
                          "removed: reclassification: the one the model places more "
                          "confidently in another class; size: the smaller one, when it "
                          "holds under size_threshold of the class (the paper's rule)",
                          choices=("reclassification", "size"))
    size_threshold: float = param(0.35, "analysis=size: the largest share of a class "
                                  "the poisoned cluster may hold", gt=0, le=0.5)

    def find_poison(self, model: Model, dataset: Dataset, rng: np.random.Generator
                    ) -> np.ndarray:
        model.require(Access.GRADIENTS)  # the defender reads their own model's layers
        x, y = dataset.x_train, np.asarray(dataset.y_train)
        features = model.features(x)
        other = None
        if self.analysis == "reclassification" and dataset.n_classes >= 3:
            other = model.logits(x)
        flagged: list[np.ndarray] = []
        for c, rows in _classes(y, dataset.n_classes):
            seed = int(rng.integers(2**31))  # drawn for every class: seeds never shift
            if len(rows) < MIN_ROWS:
                continue
            labels, gain = self.split(features[rows], seed)
            if (self.separation and gain <= self.separation) or len(np.unique(labels)) < 2:
                continue
            suspect = (self.by_size(labels) if other is None
                       else self.by_reclassification(labels, other[rows], c))
            if suspect is not None:
                flagged.append(rows[labels == suspect])
        return np.concatenate(flagged) if flagged else np.zeros(0, dtype=np.int64)

    def split(self, features: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        """The rows' cluster (0 or 1) under a two-component diagonal Gaussian mixture on
        the PCA components, and the drop in BIC per row from one component to two."""
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        centred = features.astype(np.float64) - features.mean(axis=0)
        k = max(1, min(self.dims, len(features) - 1, features.shape[1]))
        reduced = PCA(n_components=k, svd_solver="full").fit_transform(centred)
        two = GaussianMixture(2, covariance_type="diag", random_state=seed).fit(reduced)
        one = GaussianMixture(1, covariance_type="diag", random_state=seed).fit(reduced)
        gain = (one.bic(reduced) - two.bic(reduced)) / len(reduced)
        return two.predict(reduced), float(gain)

    def by_size(self, labels: np.ndarray) -> int | None:
        """The smaller cluster if it holds under ``size_threshold`` of the class."""
        sizes = np.bincount(labels, minlength=2)
        small = int(sizes.argmin())
        return small if sizes[small] < self.size_threshold * len(labels) else None

    @staticmethod
    def by_reclassification(labels: np.ndarray, logits: np.ndarray, label: int) -> int:
        """The cluster whose rows the model places more confidently in a class other than
        ``label``: the mean over its rows of the top probability of the softmax over the
        other classes' logits."""
        others = softmax(np.delete(logits, label, axis=1)).max(axis=1)
        return int(np.argmax([others[labels == k].mean() for k in (0, 1)]))


class SpectralSignatures(PoisonFilter):
    """Spectral signatures: remove each class's rows most aligned with its top direction.

    Tran, Li and Madry, 2018, "Spectral Signatures in Backdoor Attacks".
    """

    name = "spectral-signatures"
    in_default_audit = False  # a poisoning study: name it (examples/poison-filters.toml)

    expected_fraction: float = param(0.1, "epsilon: the largest share of a class the "
                                     "defender expects poisoned; the top 1.5 epsilon of "
                                     "every class (rounded) is removed", gt=0, le=0.5)

    def removed_per_class(self, n: int) -> int:
        """How many of a class's ``n`` rows are removed: ``1.5 * expected_fraction * n``
        rounded half up, at most ``n``."""
        return min(n, int(math.floor(1.5 * self.expected_fraction * n + 0.5)))

    def find_poison(self, model: Model, dataset: Dataset, rng: np.random.Generator
                    ) -> np.ndarray:
        model.require(Access.GRADIENTS)  # the defender reads their own model's layers
        y = np.asarray(dataset.y_train)
        features = model.features(dataset.x_train)
        flagged = []
        for _, rows in _classes(y, dataset.n_classes):
            if len(rows) < 2:
                continue
            scores = spectral_scores(features[rows])
            order = np.argsort(-scores, kind="stable")
            flagged.append(rows[order[:self.removed_per_class(len(rows))]])
        return np.concatenate(flagged) if flagged else np.zeros(0, dtype=np.int64)


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """Each row's squared projection on the top right singular vector of the centred
    ``features`` (Tran et al.'s outlier score)."""
    centred = features.astype(np.float64) - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


class EntropyTest:
    """STRIP's test on a batch: the mean Shannon entropy (nats) of ``model``'s predictions
    over the input superimposed with each overlay; called, True for each row whose
    entropy is below ``threshold`` (rejected)."""

    def __init__(self, model: Model, overlays: np.ndarray, superimpose: str = "add",
                 threshold: float = -math.inf) -> None:
        self.model = model
        self.overlays = np.asarray(overlays, dtype=np.float32)
        self.superimpose = superimpose
        self.threshold = float(threshold)

    def superimposed(self, x: np.ndarray, overlay: np.ndarray) -> np.ndarray:
        """``x`` with ``overlay`` drawn over it: their sum above the range's low end,
        clipped (``add``), or their average (``blend``)."""
        low, high = self.model.clip_values
        if self.superimpose == "blend":
            return ((x + overlay) / 2).astype(np.float32)
        return np.clip(x + overlay - low, low, high).astype(np.float32)

    def entropy(self, x: np.ndarray) -> np.ndarray:
        """Per row of ``x``, the mean entropy of the predictions over the overlays."""
        x = np.asarray(x, dtype=np.float32)
        total = np.zeros(len(x), dtype=np.float64)
        for overlay in self.overlays:
            p = self.model.predict(self.superimposed(x, overlay)).astype(np.float64)
            total -= (p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        return total / max(len(self.overlays), 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.entropy(x.detach().cpu().numpy()) < self.threshold)


def fitted_threshold(entropies: np.ndarray, frr: float, fit: str) -> float:
    """The entropy below which an input is rejected, so that about ``frr`` of inputs like
    the calibration ones are: the ``frr`` quantile of a normal distribution fitted to
    ``entropies`` (``normal``: their mean and standard deviation; ``robust-normal``:
    their median and 1.4826 times their median absolute deviation), or their empirical
    ``frr`` quantile (``quantile``)."""
    e = np.asarray(entropies, dtype=np.float64)
    if fit == "quantile":
        return float(np.quantile(e, frr))
    z = statistics.NormalDist().inv_cdf(frr)
    if fit == "normal":
        return float(e.mean() + z * e.std())
    centre = float(np.median(e))
    return centre + z * 1.4826 * float(np.median(np.abs(e - centre)))


class STRIP(Defense):
    """STRIP: reject inputs whose predictions stay certain under superimposed images.

    Gao et al., 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks".
    In a poisoning cell the overlays and the calibration rows come from the training split
    as the deployer has it, poisoned rows included.
    """

    name = "strip"
    in_default_audit = False  # a poisoning study: name it (examples/poison-filters.toml)
    stage = Stage.DETECTOR
    fits_training_data = True  # overlays and threshold come from the training split
    adaptive = False
    evaluation = (
        "Not adaptive: attacks do not optimise against the entropy test (the classifier "
        "is unchanged, so robust accuracy is the undefended model's), and the detection "
        "rate is what an attacker blind to STRIP meets: an upper bound."
    )

    overlays: int = param(100, "training images superimposed on each input (N in the "
                          "paper); fewer make the test depend on which were drawn", ge=1)
    calibration: int = param(200, "training rows whose entropies set the threshold "
                             "(drawn apart from the overlays; at most the rows left)", ge=2)
    frr: float = param(0.01, "false rejection rate the defender accepts: the quantile of "
                       "the fitted entropy distribution used as the threshold", gt=0, lt=1)
    superimpose: str = param("add", "add: input plus overlay, clipped to the valid range "
                             "(the paper); blend: their average",
                             choices=("add", "blend"))
    threshold_fit: str = param("robust-normal", "robust-normal: normal with the median "
                               "and scaled MAD of the calibration entropies; normal: their "
                               "mean and std (the paper); quantile: their empirical frr "
                               "quantile", choices=("robust-normal", "normal", "quantile"))

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        model.require(Access.SCORES)  # the entropy of the model's probabilities
        x = np.asarray(dataset.x_train, dtype=np.float32)
        if len(x) < self.overlays + 2:
            raise NotApplicable(f"needs {self.overlays} training images to superimpose and "
                                f"2 more to calibrate on; the data has {len(x)}")
        order = rng.permutation(len(x))
        overlays = x[order[:self.overlays]]
        calibration = x[order[self.overlays:self.overlays + self.calibration]]
        test = EntropyTest(model, overlays, self.superimpose)
        test.threshold = fitted_threshold(test.entropy(calibration), self.frr,
                                          self.threshold_fit)
        return model.deploy(detect=test)


@hookimpl
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    register(ActivationClustering)
    register(SpectralSignatures)
    register(STRIP)

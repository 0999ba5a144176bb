"""The model under audit: the only door to it, for attacks and defenses alike.

A :class:`Model` wraps a ``torch.nn.Module`` that maps a float batch shaped
``(N, *input_shape)`` to logits ``(N, n_classes)``. It enforces what its deployment
exposes (:class:`Access`): a labels-only model answers :meth:`Model.labels` and nothing
else; a scores-only one never shows its module or gradients. Every row sent to it is
counted in :attr:`Model.queries`, and an attack's outcome reports that count.

A defense builds its deployed model with :meth:`Model.deploy`: pre-processing,
post-processing, a lower access level, and an optional gradient stand-in that gradient
attacks differentiate through instead (BPDA), without knowing it is there. A defended
model is again a Model, so attacks never need to know which defense they face.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from gauntlet import device as audit_device
from gauntlet.errors import AccessDenied, NotApplicable

if TYPE_CHECKING:
    import torch

    from gauntlet.dataset import Dataset
    from gauntlet.serving import Served


class Access(enum.IntEnum):
    """What an attacker may use. Ordered: each level includes those below it."""

    LABELS = 1  # the predicted class only
    SCORES = 2  # the probability vector
    GRADIENTS = 3  # white box: gradients of the loss w.r.t. the input


@dataclasses.dataclass
class Recipe:
    """How to train this architecture from scratch.

    Poisoning, shadow models and training-time defenses need it. ``build`` returns a
    fresh untrained module; ``fit`` trains it in place on ``(x, y)`` with the given seed.
    Results are cached per training set, seed and fit, so the same poisoned set is
    trained once however many defenses are then stacked on top of it.

    ``options`` holds the hyperparameters ``fit`` uses (``epochs``, ``lr``), for another
    training procedure that keeps them: adversarial training passes its own fit to
    :meth:`train` and reads the learning rate from here (its default when absent).
    """

    build: Callable[[], torch.nn.Module]
    fit: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], None]
    description: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    _cache: dict[str, torch.nn.Module] = dataclasses.field(default_factory=dict, repr=False)
    #: The cache-key suffix of this recipe's own ``fit`` ("" for the original one).
    _fit_key: str = dataclasses.field(default="", repr=False)

    def train(self, x: np.ndarray, y: np.ndarray, seed: int,
              fit: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], None] | None
              = None) -> torch.nn.Module:
        """A module built by ``build`` and trained on ``(x, y)`` by ``fit`` (this recipe's
        own when None), cached in memory and in the audit's content cache
        (:func:`gauntlet.cache.train_cached`). Another ``fit`` is part of the cache key through its
        ``repr``, which must name it and every setting (a frozen dataclass's does, e.g.
        :class:`gauntlet.training.AdversarialFit`)."""
        from gauntlet.cache import train_cached

        fit_key = self._fit_key if fit is None else f"|{fit!r}"
        key = _fingerprint(x, y, seed) + fit_key
        if key not in self._cache:
            module = train_cached(self.build, fit or self.fit, self.description,
                                  self.options, fit_key, x, y, seed)
            module.eval()
            self._cache[key] = module
        return self._cache[key]

    def with_fit(self, fit: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], None]
                 ) -> Recipe:
        """This recipe training with ``fit`` instead (same build, options and cache).

        A training-time defense leaves it on the model it returns, so that whatever
        re-trains the defended model (a poisoning attack, shadow models) trains it the
        defended way; ``fit``'s ``repr`` keys the cache, as in :meth:`train`.
        """
        return dataclasses.replace(self, fit=fit, description=f"{self.description}, "
                                   f"then {fit!r}" if self.description else repr(fit),
                                   _cache=self._cache, _fit_key=f"|{fit!r}")


def _fingerprint(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    h.update(str(seed).encode())
    return h.hexdigest()


Transform = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One defense's part of a deployment (made by :meth:`Model.deploy`)."""

    pre: Transform | None = None
    post: Transform | None = None
    gradient: Transform | None = None
    access: Access = Access.GRADIENTS
    serve: Callable[[Any], Any] | None = None
    detect: Transform | None = None
    eot: int = 1


def _composed(base: Any, layers: tuple[Layer, ...], served: dict[int, Any], *,
              stand_ins: bool) -> Any:
    """``base`` wrapped by each layer in turn (the last deployed layer is outermost); a
    wrapper layer replaces everything below it by the module it serves, built once per
    composition into ``served`` (by layer index) and shared by both paths."""
    from torch import nn

    class Deployed(nn.Module):
        def __init__(self, inner: nn.Module, layer: Layer) -> None:
            super().__init__()
            self.inner = inner
            self.layer = layer
            # Register module transforms so they follow the model (device, eval mode).
            for role in ("pre", "post", "gradient"):
                part = getattr(layer, role)
                if isinstance(part, nn.Module):
                    self.add_module(role, part)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import torch

            eot = self.layer.eot
            if eot > 1 and stand_ins and torch.is_grad_enabled():
                # EOT: the log of the mean probabilities over ``eot`` fresh draws, so the
                # gradient is that of the expected probabilities. Predictions take one draw.
                logp = torch.stack([torch.log_softmax(self._once(x), dim=1)
                                    for _ in range(eot)])
                return torch.logsumexp(logp, dim=0) - math.log(eot)
            return self._once(x)

        def _once(self, x: torch.Tensor) -> torch.Tensor:
            import torch

            pre, stand_in = self.layer.pre, self.layer.gradient
            if pre is not None:
                if stand_ins and stand_in is not None and torch.is_grad_enabled():
                    # BPDA: the forward value is the defense's, the gradient the stand-in's.
                    with torch.no_grad():
                        real = pre(x)
                    approx = stand_in(x)
                    x = approx + (real - approx).detach()
                else:
                    x = pre(x)
            z = self.inner(x)
            post = self.layer.post
            return post(z) if post is not None else z

    module = base
    for i, layer in enumerate(layers):
        if layer.serve is not None:
            if i not in served:
                served[i] = layer.serve(module)
            module = served[i]
        else:
            module = Deployed(module, layer)
    return module


def _tensor_device(module: Any) -> torch.device | None:
    """Where ``module``'s first parameter (else buffer) lives; None when it has neither
    (a black box that computes wherever it likes)."""
    for tensors in (module.parameters(), module.buffers()):
        for t in tensors:
            return t.device  # type: ignore[no-any-return]
    return None


@functools.cache
def _on_device_class() -> type:
    from torch import nn

    class OnDevice(nn.Module):
        """A base module on the GPU, called with batches on any device: each batch goes
        to the module's device and its logits come back to the batch's (both moves are
        differentiable), so defense layers and plugins keep computing on the CPU."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Read at each call, not kept: the module may have moved since (a device switch).
            at = _tensor_device(self.module)
            out = self.module(x if at is None else x.to(at))
            return out.to(x.device)  # type: ignore[no-any-return]

    return OnDevice


#: The device adapter of each base module on CUDA, for as long as a composition holds it:
#: one per module, so a wrapper layer that keeps its work per module it serves (fhe's
#: distilled twin) finds it again in every deployment of that module, as on the CPU.
_adapters: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _placed(module: Any, where: str) -> Any:
    """``module`` moved, in place, to ``where`` (``cpu`` or ``cuda``), as the composed
    paths call it: the module itself on the CPU (no wrapper, no copy); on CUDA, in the
    adapter that moves batches there and logits back. A module without parameters or
    buffers stays as it is and is called directly."""
    at = _tensor_device(module)
    if at is None:
        return module
    if at.type != where:
        module.to(where)
    if where == "cpu":
        return module
    adapter = _adapters.get(id(module))
    if adapter is None or adapter.module is not module:
        adapter = _on_device_class()(module)
        _adapters[id(module)] = adapter
    return adapter


def network(module: torch.nn.Module) -> torch.nn.Module:
    """The network a wrapper layer serves (``deploy(serve=...)`` gets ``module``): on
    CUDA the base module comes inside a device adapter that takes CPU batches; this is
    the module inside it, for a wrapper that reads the network's layers and weights
    (fhe mirrors them) rather than calling it. Anything else is returned as it is."""
    if isinstance(module, _on_device_class()):
        return cast("torch.nn.Module", module.module)
    return module


class Model:
    """A classifier under audit, as deployed.

    :param module: maps ``(N, *input_shape)`` float32 to logits ``(N, n_classes)``. Its
        weights are frozen (``requires_grad=False``): attacks need input gradients only.
    :param input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
    :param n_classes: number of classes.
    :param clip_values: the valid input range, ``(low, high)``.
    :param access: what an attacker of this model may use.
    :param recipe: how to train this architecture from scratch, when known.
    :param name: a label for reports.
    :param source: provenance (file path, sha256, format) for the report.
    :param batch_size: rows per forward pass when the model evaluates a large array.

    The module computes on the audit's device (:func:`gauntlet.device.current`): it is
    moved there in place, and on CUDA its forward pass is wrapped so that it still takes
    and returns CPU tensors. A model used after the device changed (made before the
    audit chose CUDA, or used again after) moves its module at its next query.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: tuple[int, ...],
        n_classes: int,
        clip_values: tuple[float, float] = (0.0, 1.0),
        access: Access = Access.GRADIENTS,
        recipe: Recipe | None = None,
        name: str = "model",
        source: dict[str, Any] | None = None,
        batch_size: int = 512,
    ) -> None:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._base = module
        self._layers: tuple[Layer, ...] = ()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.n_classes = int(n_classes)
        self.clip_values = (float(clip_values[0]), float(clip_values[1]))
        self._base_access = Access(access)
        self.recipe = recipe
        self.name = name
        self.source = dict(source or {})
        self.batch_size = batch_size
        #: Rows sent to this model by plugins (predict, labels, gradients, forward passes).
        self.queries = 0
        self._watched: np.ndarray | None = None
        self._seen: np.ndarray | None = None
        #: Facts about the base module from how it was trained (see :meth:`with_module`).
        self._facts: dict[str, Any] = {}
        self._compose()

    def _compose(self) -> None:
        from gauntlet.serving import Served

        # Every deployment of a module composes for the device current now: it is one per
        # process, so models sharing a module never pull it two ways.
        self._device = audit_device.current()
        base = _placed(self._base, self._device)
        served: dict[int, Any] = {}
        self._forward = _composed(base, self._layers, served, stand_ins=False)
        self._gradient_path = _composed(base, self._layers, served, stand_ins=True)
        self.access = min([self._base_access, *(layer.access for layer in self._layers)])
        for module in served.values():
            if not isinstance(module, Served):
                raise TypeError(f"deploy(serve=...) built {type(module).__name__}, which "
                                "is not a gauntlet.serving.Served module")
        # The outermost wrapper serves the model, unless a later layer runs in the clear.
        top = max(served, default=None)
        self._served = served[top] if top is not None and top == len(self._layers) - 1 \
            else None
        limits = [m.rows for m in served.values() if m.rows is not None]
        #: The most test rows an attack cell sends through this deployment (None: all).
        self.row_limit: int | None = min(limits) if limits else None
        if self._served is not None and self._served.batch_size:
            self.batch_size = int(self._served.batch_size)
        # Under EOT the gradient pass averages several draws: not what one query serves.
        self._gradient_values_served = all(m.gradient_values_served
                                           for m in served.values()) and \
            all(layer.eot == 1 for layer in self._layers)

    def _follow_device(self) -> None:
        """Compose again when the audit's device changed since this model was composed
        (a Model passed to the audit, made before it chose CUDA), so the module computes
        there and the paths fit it."""
        if self._device != audit_device.current():
            self._compose()

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes}, access={self.access.name})"
        )

    # -- what plugins may ask -------------------------------------------------------
    def labels(self, x: np.ndarray) -> np.ndarray:
        """The predicted class of each row (int64). Every deployment answers this."""
        self.queries += len(x)
        scores = _scores(self, x)
        self._remember(x, scores)
        return scores.argmax(axis=1).astype(np.int64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch (softmax of the logits); needs scores access."""
        self._require(Access.SCORES, "scores (predict)")
        self.queries += len(x)
        scores = _scores(self, x)
        self._remember(x, scores)
        return scores

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch, as float32 numpy; needs gradient (white-box) access."""
        self._require(Access.GRADIENTS, "logits")
        self.queries += len(x)
        return _logits(self, x)

    def feature_module(self) -> torch.nn.Module:
        """A torch module mapping a batch to the base network's penultimate activations
        (the input of its last ``torch.nn.Linear`` layer), flattened to ``(N, D)``, with
        the graph kept so gradients reach the inputs (feature collision); every row it
        sees is counted. Defense layers are not applied: these are the features the
        network learnt. Needs gradient access; NotApplicable when the network has no
        Linear layer."""
        from torch import nn

        self._require(Access.GRADIENTS, "features")
        self._follow_device()
        last = [m for m in self._base.modules() if isinstance(m, nn.Linear)]
        if not last:
            raise NotApplicable("needs the network's penultimate features (the input of "
                                "its last torch.nn.Linear layer), and it has no Linear layer")
        model, net, layer = self, self._base, last[-1]

        class Features(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                caught: list[torch.Tensor] = []
                hook = layer.register_forward_hook(
                    lambda _m, inputs, _out: caught.append(inputs[0]))
                # The network computes where it lives (the GPU on CUDA); the features come
                # back to the batch's device, differentiably. No-ops on the CPU.
                at = _tensor_device(self.net)
                try:
                    self.net(x if at is None else x.to(at))
                finally:
                    hook.remove()
                model.queries += int(x.shape[0])
                return caught[-1].reshape(len(x), -1).to(x.device)

        return Features().eval()

    def features(self, x: np.ndarray) -> np.ndarray:
        """:meth:`feature_module` on a numpy batch, without gradients: ``(N, D)`` float32
        (poison filters cluster them)."""
        import torch

        module = self.feature_module()
        with torch.no_grad():
            out = [module(_tensor(np.asarray(x[start:start + self.batch_size]))).numpy()
                   for start in range(0, max(len(x), 1), self.batch_size)]
        return np.concatenate(out).astype(np.float32)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The gradient of the mean cross-entropy over the rows given (one batch) with
        respect to each input, through the deployment's gradient stand-ins; needs gradient
        access. The forward pass it takes also counts as the rows' clean predictions."""
        return self.loss_gradient_and_scores(x, y)[0]

    def loss_gradient_and_scores(self, x: np.ndarray,
                                 y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`loss_gradient`, and the class probabilities of the same forward pass
        when they are exactly what the deployment serves for these rows, else None (an
        EOT average, or a gradient stand-in whose values differ from the served ones).

        An iterative attack uses them to stop on a row that is already misclassified
        (the row's served answer is known to be wrong) without spending another query.
        """
        import torch
        import torch.nn.functional as F

        self._require(Access.GRADIENTS, "gradients (loss_gradient)")
        self._follow_device()
        self.queries += len(x)
        xb = _tensor(x).requires_grad_(True)
        logits = self._gradient_path(xb)
        # A copy: labels from Ray's object store are read-only, which torch warns about.
        loss = F.cross_entropy(logits, torch.as_tensor(np.array(y, dtype=np.int64)))
        # autograd.grad asks for the input's gradient only: no weight gradient is computed.
        (grad,) = torch.autograd.grad(loss, xb)
        if not self._gradient_values_served:
            return grad.cpu().numpy(), None
        scores = softmax(logits.detach().float().cpu().numpy())
        self._remember(x, scores)
        return grad.cpu().numpy(), scores

    def differentiable(self) -> torch.nn.Module:
        """A torch module computing the deployed logits, for attacks written in torch or
        run by a library (ART): its backward goes through the defense's gradient
        stand-ins, and every row it sees is counted. Needs gradient access."""
        from torch import nn

        self._require(Access.GRADIENTS, "its torch module")
        self._follow_device()
        model, path = self, self._gradient_path

        class Counting(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.path = path

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                model.queries += int(x.shape[0])
                if x.device.type == "cpu":
                    return self.path(x)  # type: ignore[no-any-return]
                # A library computing on the GPU (ART with device_type="gpu") sends its
                # batches there: the deployment takes them on the CPU, where its defense
                # layers compute, and the logits go back to the batch's device.
                return self.path(x.cpu()).to(x.device)  # type: ignore[no-any-return]

            def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Counting:
                # ART moves the module it is given to its device (``.to(device)``); the
                # deployment's parts stay where the Model put them, or the defense layers,
                # shared with the model's own paths, would move under them.
                return self

        return Counting().eval()

    def to_art(self) -> Any:
        """An ART ``PyTorchClassifier`` over :meth:`differentiable` (gradient access), on
        the GPU when the audit computes there."""
        import torch
        from art.estimators.classification import PyTorchClassifier

        return PyTorchClassifier(
            model=self.differentiable(),
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=self.input_shape,
            nb_classes=self.n_classes,
            clip_values=self.clip_values,
            device_type="gpu" if audit_device.current() == "cuda" else "cpu",
        )

    # -- what defenses use -----------------------------------------------------------
    def deploy(self, *, pre: Transform | None = None, post: Transform | None = None,
               access: Access | None = None, gradient: Transform | None = None,
               serve: Callable[[Any], Any] | None = None,
               detect: Transform | None = None, eot: int = 1) -> Model:
        """This model behind one more defense, as a new Model (this one is unchanged).

        :param pre: applied to each input batch (a torch tensor) before the model.
        :param post: applied to the model's logits; return logits (for an output defense
            on probabilities, return their log: the model's softmax gives them back).
        :param access: what the deployment exposes, at most what this model exposes.
        :param gradient: a differentiable stand-in for ``pre`` that gradient attacks use
            in the backward pass (BPDA), e.g. ``lambda x: x`` for a non-differentiable
            pre-processing that leaves inputs roughly unchanged.
        :param serve: for a defense that changes how the model is served (stage
            ``wrapper``, e.g. encrypted inference): called with the module below it, it
            returns a :class:`gauntlet.serving.Served` torch module that serves in its
            place. Not combined with ``pre``/``post`` (deploy twice instead).
        :param detect: a detector (stage ``detector``, e.g. MagNet): maps the batch that
            reaches this layer (before ``pre``) to a boolean tensor, True for each row the
            deployment rejects. Rejected rows are still classified; the evaluation reports
            how many were rejected beside the accuracies (:meth:`rejects`).
        :param eot: for a randomised defense, Expectation over Transformation (Athalye et
            al., 2018): on the gradient path, this layer runs ``pre``, the model below and
            ``post`` on ``eot`` fresh draws of the batch and outputs the log of their mean
            probabilities, so gradient attacks follow the expected prediction. Predictions
            (no gradient) still take one draw, as the deployment serves.

        The deployment is kept as data: :meth:`with_module` puts the same defenses
        around a re-trained base, as poisoning needs.
        """
        if gradient is not None and pre is None:
            raise TypeError("deploy(gradient=...) stands in for pre; there is no pre")
        if serve is not None and (pre is not None or post is not None):
            raise TypeError("deploy(serve=...) replaces the model; give pre/post to "
                            "another deploy() call")
        if serve is not None and detect is not None:
            raise TypeError("deploy(serve=...) replaces the model; give detect to "
                            "another deploy() call")
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise TypeError(f"deploy(eot=...) is a number of draws (an int >= 1), got {eot!r}")
        if eot > 1 and serve is not None:
            raise TypeError("deploy(eot=...) averages draws of pre/post; a served model has "
                            "neither")
        layer = Layer(pre=pre, post=post, gradient=gradient, serve=serve, detect=detect,
                      access=Access(access) if access is not None else Access.GRADIENTS,
                      eot=eot)
        return self._derived(self._base, self._layers + (layer,))

    def with_module(self, module: torch.nn.Module, recipe: Recipe | None = None,
                    facts: dict[str, Any] | None = None) -> Model:
        """The same deployment (every defense included) around another base module;
        ``recipe``, when given, replaces the model's (a training-time defense passes its
        own: :meth:`Recipe.with_fit`).

        ``facts``: what the training of ``module`` measured of it, as MetricValues (or
        floats) by metric name (a DP-SGD defense's privacy budget). They describe that
        module, so they stay with it: deployments of it keep them (:meth:`deploy`), its
        clean cell reports them (:meth:`deployment_facts`; register a
        :class:`gauntlet.Fact` per name), and another module (a poisoning attack's
        re-training) starts without them."""
        return self._derived(module, self._layers, recipe, dict(facts or {}))

    def in_the_clear(self, module: torch.nn.Module) -> Model:
        """The same deployment around another module, without its serving wrappers: how an
        attacker who knows the defense runs a model of its own (a shadow model) the way
        the target's answers are processed. Input and output processing stay; encrypted
        inference is the server's way of computing the same function, not something the
        attacker's own copy goes through (it would distil and encrypt per shadow)."""
        layers = tuple(layer for layer in self._layers if layer.serve is None)
        return self._derived(module, layers, None, {})

    def _derived(self, base: Any, layers: tuple[Layer, ...],
                 recipe: Recipe | None = None,
                 facts: dict[str, Any] | None = None) -> Model:
        new = Model(base, input_shape=self.input_shape, n_classes=self.n_classes,
                    clip_values=self.clip_values, access=self._base_access,
                    recipe=recipe or self.recipe, name=self.name, source=self.source,
                    batch_size=self.batch_size)
        new._layers = layers
        new._facts = dict(self._facts if facts is None else facts)
        new._compose()
        return new

    # -- detectors -----------------------------------------------------------------------
    @property
    def detects(self) -> bool:
        """Whether a layer of this deployment rejects inputs (see ``deploy(detect=...)``)."""
        return any(layer.detect is not None for layer in self._layers)

    def rejects(self, x: np.ndarray) -> np.ndarray | None:
        """Per row of ``x``: does the deployment reject it? None when no layer detects.
        Each detector sees the batch as it reaches its layer (after the pre-processing of
        the layers deployed after it). Part of serving ``x``: not counted again."""
        if not self.detects:
            return None
        import torch

        rejected = np.zeros(len(x), dtype=bool)
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                xb = _tensor(np.asarray(x[start:start + self.batch_size], np.float32))
                hit = torch.zeros(len(xb), dtype=torch.bool)
                for layer in reversed(self._layers):  # outermost first
                    if layer.serve is not None:
                        break  # below a wrapper, the server's own business
                    if layer.detect is not None:
                        hit |= torch.as_tensor(layer.detect(xb)).bool().reshape(-1)
                    if layer.pre is not None:
                        xb = layer.pre(xb)
                rejected[start:start + len(hit)] = hit.numpy()
        return rejected

    # -- what the serving side sees and does (confidentiality attacks) ---------------
    @property
    def served(self) -> Served | None:
        """The wrapper module that serves this model (None: served in the clear)."""
        self._follow_device()
        return self._served

    def _not_rehearsing(self) -> None:
        from gauntlet.serving import Rehearsal

        self._follow_device()
        if self._served is not None and self._served.recording is not None:
            raise Rehearsal("a rehearsal records answers only")

    @property
    def exposes_inputs(self) -> bool:
        """Whether the server of this deployment receives inputs in the clear."""
        return self._served is None or self._served.exposes_inputs

    def server_view(self, x: np.ndarray) -> np.ndarray:
        """Per row, numbers describing what the server receives when it serves that row
        (the input itself when served in the clear), shape ``(N, k)``. The evaluator's
        look at the wire, not a query: not counted."""
        self._not_rehearsing()
        x = np.asarray(x, dtype=np.float32)
        if self._served is None:
            return x.reshape(len(x), -1)
        return np.asarray(self._served.observe(x))

    def tampered(self, x: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The labels the client receives for ``x`` when a malicious server adds ``shift``
        (one value per class) to the answer it returns. Counted as queries."""
        self._not_rehearsing()
        self.queries += len(x)
        shift = np.asarray(shift, dtype=np.float64).reshape(1, -1)
        if self._served is None:  # in the clear, the server returns anything it likes
            logits = _logits(self, x).astype(np.float64) + shift
        else:
            logits = np.asarray(self._served.tamper(np.asarray(x, np.float32), shift))
        return logits.argmax(axis=1).astype(np.int64)

    def deployment_facts(self, x: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """What is known of this deployment, as MetricValues by metric name: the facts
        its base module was trained with (``with_module(..., facts=...)``), and what the
        serving wrapper measured of itself on the clean rows ``x`` (served ``scores``);
        empty for a module without facts served in the clear."""
        self._not_rehearsing()
        facts = dict(self._facts)
        if self._served is not None:
            facts.update(self._served.facts(x, scores))
        return facts

    # -- what attacks need ----------------------------------------------------------
    def require(self, access: Access) -> None:
        """Raise NotApplicable unless an attacker of this model has ``access``."""
        if self.access < access:
            raise NotApplicable(
                f"needs {access.name.lower()} access; this model exposes "
                f"{self.access.name.lower()} only"
            )

    def _require(self, access: Access, what: str) -> None:
        if self.access < access:
            raise AccessDenied(
                f"asked for {what}, but this deployment exposes {self.access.name.lower()} "
                f"only; an attack must declare needs = Access.{access.name}"
            )

    def require_recipe(self) -> Recipe:
        """Return the training recipe or raise NotApplicable."""
        if self.recipe is None:
            raise NotApplicable(
                "needs to re-train the model, and it has no training recipe "
                "(load it as weights plus an architecture factory, or use the built-in model)"
            )
        return self.recipe

    def retrain(self, x: np.ndarray, y: np.ndarray, seed: int) -> Model:
        """Train this architecture from scratch on ``(x, y)``, keeping every defense."""
        recipe = self.require_recipe()
        return self.with_module(recipe.train(x, y, seed))

    def check_data(self, dataset: Dataset) -> None:
        """Raise DataError if ``dataset`` does not fit this model."""
        from gauntlet.errors import DataError

        if tuple(dataset.input_shape) != self.input_shape:
            raise DataError(
                f"data {dataset.name!r} has inputs shaped {tuple(dataset.input_shape)}, "
                f"but model {self.name!r} expects {self.input_shape}"
            )
        if dataset.n_classes > self.n_classes:
            raise DataError(
                f"data {dataset.name!r} has {dataset.n_classes} classes, "
                f"but model {self.name!r} outputs {self.n_classes}"
            )

    # -- clean predictions taken on the way ------------------------------------------
    def _remember(self, x: np.ndarray, scores: np.ndarray) -> None:
        if x is self._watched and self._seen is None:
            self._seen = scores

    @contextlib.contextmanager
    def _watching(self, x: np.ndarray) -> Iterator[Callable[[], np.ndarray | None]]:
        """While the block runs, keep the scores of the first pass over exactly ``x``
        (the same array object); the yielded function returns them, or None."""
        self._watched, self._seen = x, None
        try:
            yield lambda: self._seen
        finally:
            self._watched = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, in float64 then float32 (how every score is computed)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def _tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing ``x``'s memory where it can (a read-only array is copied:
    torch tensors are always writable)."""
    import torch

    a = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous
                            else np.ascontiguousarray(a).copy())


def _logits(model: Model, x: np.ndarray) -> np.ndarray:
    import torch

    model._follow_device()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), model.batch_size):
            chunk = _tensor(x[start : start + model.batch_size])
            out.append(model._forward(chunk).float().cpu().numpy())
    if not out:
        return np.zeros((0, model.n_classes), dtype=np.float32)
    return np.concatenate(out)


def _scores(model: Model, x: np.ndarray) -> np.ndarray:
    return softmax(_logits(model, x)) if len(x) else np.zeros((0, model.n_classes), np.float32)


def measure(model: Model, x: np.ndarray) -> np.ndarray:
    """What the deployment outputs for ``x``, for the core's measurements: its
    probabilities, or one-hot rows for a labels-only deployment. Not counted as queries,
    and not part of the plugin API (plugins ask :meth:`Model.predict`)."""
    scores = _scores(model, x)
    if model.access >= Access.SCORES:
        return scores
    onehot = np.zeros_like(scores)
    onehot[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    return onehot


def weights_sha256(model: Model) -> str | None:
    """The SHA-256 of the base module's parameters and buffers in state_dict order, or
    None for a black box with no weights Gauntlet can see."""
    import torch

    state = model._base.state_dict()
    if not state:
        return None
    h = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().flatten()
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        # Bytes via uint8, so dtypes numpy lacks (bfloat16) hash too.
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

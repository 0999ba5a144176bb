"""Encrypted inference (CKKS, through TenSEAL) as a defense, with what it costs.

The ``fhe`` defense serves the model the way a client with private inputs would use it:
the client encrypts every query, the server evaluates an FHE-friendly *twin* of the
model on the ciphertexts, and the client decrypts the scores. CKKS evaluates additions
and multiplications only, so the twin has square activations (CryptoNets: Gilad-Bachrach
et al., 2016) and is distilled from the supplied model on the training inputs; its
agreement with the model is measured, never assumed.

Layout: one slot per input, one ciphertext per input value (CryptoNets' layout). A
batch of up to ``poly_modulus_degree / 2`` inputs costs the same as a single input, so
the cost per input falls with the batch; a linear layer is ``in x out`` products of a
ciphertext with a plain scalar, and a square one ciphertext product, each consuming one
level of the coefficient modulus. The modulus is ``[outer, scale x depth, outer]`` bits:
a choice above the HE standard's 128-bit bound for the polynomial degree (the tables
SEAL enforces) is refused before anything runs.

What it does not do, and the report says so: it hides inputs from the server, not the
model from the client's adversarial inputs (evasion attacks run white-box through the
plaintext twin, and their adversarial inputs are then served encrypted), not the
answers from a malicious server (``server-tamper``), and not the training data from
membership inference on the decrypted scores.

Needs the ``fhe`` extra (``pip install "ml-gauntlet[fhe]"``: TenSEAL).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gauntlet import (
    Access,
    Dataset,
    Defense,
    Fact,
    MetricValue,
    Model,
    NotApplicable,
    Stage,
    hookimpl,
    param,
    proportion,
)
from gauntlet.errors import ConfigError
from gauntlet.model import network
from gauntlet.plugins._fhe_summary import summary_lines
from gauntlet.serving import Served

#: The largest total coefficient-modulus size (bits) for each polynomial degree at each
#: security level, from the Homomorphic Encryption Standard (Albrecht et al., 2018,
#: table of classical security with a ternary secret), as SEAL enforces for 128 bits.
MAX_MODULUS_BITS: dict[int, dict[int, int]] = {
    1024: {128: 27, 192: 19, 256: 14},
    2048: {128: 54, 192: 37, 256: 29},
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}
#: Activations the twin replaces by a square.
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
               nn.Softplus, nn.Hardtanh, nn.ReLU6)
#: Layers the twin copies as they are (none costs a level).
PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)
EXTRA = 'pip install "ml-gauntlet[fhe]"'
#: How many input values of a row the server-view measurement encrypts and shows the
#: server (each is one ciphertext, about 5 ms to encrypt): those that vary most.
VIEW_VALUES = 4
#: Distinct batches whose decrypted answers a deployment keeps (oldest dropped first).
ANSWERS_KEPT = 256


def security_bits(poly_degree: int, modulus_bits: int) -> int:
    """The highest standard security level (128, 192 or 256 bits) these parameters reach,
    or 0 below 128 bits."""
    table = MAX_MODULUS_BITS[poly_degree]
    return max((level for level, most in table.items() if modulus_bits <= most), default=0)


class Square(nn.Module):
    """x -> x * x: the activation CKKS evaluates with one ciphertext product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


# -- the twin --------------------------------------------------------------------------


def mirror(inner: nn.Module) -> tuple[nn.Sequential | None, str]:
    """A copy of ``inner`` with square activations, or None and why it cannot be made.

    Mirrors a ``nn.Sequential`` (nested ones are flattened) of Linear layers, the
    activations in :data:`ACTIVATIONS` and Flatten/Dropout/Identity; the copied Linear
    layers start from the model's weights.
    """
    def flat(m: nn.Module) -> list[nn.Module]:
        if isinstance(m, nn.Sequential):
            return [leaf for child in m for leaf in flat(child)]
        return [m]

    if not isinstance(inner, nn.Sequential):
        return None, (f"the model is a {type(inner).__name__}, not a torch Sequential of "
                      "Linear layers and activations")
    layers: list[nn.Module] = [nn.Flatten()]
    for m in flat(inner):
        if isinstance(m, nn.Linear):
            copy = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            copy.load_state_dict(m.state_dict())
            layers.append(copy)
        elif isinstance(m, ACTIVATIONS):
            layers.append(Square())
        elif isinstance(m, PASS_THROUGH):
            continue
        else:
            return None, (f"it has a {type(m).__name__} layer, which the twin cannot mirror "
                          "yet (Linear layers and activations only)")
    return nn.Sequential(*layers), "mirrors the model's layers with square activations"


def compact(n_inputs: int, hidden: int, n_classes: int) -> nn.Sequential:
    """inputs -> hidden -> square -> classes: the smallest twin (three levels)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_inputs, hidden), Square(),
                         nn.Linear(hidden, n_classes))


def depth(twin: nn.Sequential) -> int:
    """Multiplicative levels the twin consumes: one per Linear layer and per square."""
    return sum(isinstance(m, nn.Linear | Square) for m in twin)


def distill(twin: nn.Module, teacher: nn.Module, x: np.ndarray, *, steps: int, seed: int,
            lr: float = 3e-3, batch_size: int = 128) -> None:
    """Train ``twin`` in place to give ``teacher``'s class probabilities on ``x`` (KL
    divergence), with a small penalty on its logits' size: CKKS decrypts a result
    correctly only while it stays well inside the last modulus prime's range."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        target = torch.cat([torch.log_softmax(teacher(xt[i:i + 512]).float(), dim=1)
                            for i in range(0, len(xt), 512)])
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    twin.train()
    for _ in range(steps):
        idx = torch.randint(len(xt), (min(batch_size, len(xt)),), generator=gen)
        out = twin(xt[idx])
        loss = nn.functional.kl_div(torch.log_softmax(out, dim=1), target[idx],
                                    log_target=True, reduction="batchmean")
        loss = loss + 1e-4 * out.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)


# -- the encrypted network ---------------------------------------------------------------


class CkksNet:
    """The twin as CKKS operations on batched ciphertexts (one slot per input).

    :param twin: a Sequential of Flatten, Linear and Square layers.
    :param poly_degree, scale_bits, outer_bits: the CKKS parameters.
    """

    def __init__(self, twin: nn.Sequential, poly_degree: int, scale_bits: int,
                 outer_bits: int) -> None:
        import tenseal as ts

        self.ops: list[tuple[str, Any, Any]] = []
        for m in twin:
            if isinstance(m, nn.Linear):
                w = m.weight.detach().double().numpy()
                b = (m.bias.detach().double().numpy() if m.bias is not None
                     else np.zeros(m.out_features))
                self.ops.append(("linear", ts.plain_tensor(w.T.tolist()),
                                 ts.plain_tensor([b.tolist()])))
            elif isinstance(m, Square):
                self.ops.append(("square", None, None))
        self.levels = depth(twin)
        self.modulus = [outer_bits] + [scale_bits] * self.levels + [outer_bits]
        self.poly_degree = poly_degree
        self.slots = poly_degree // 2
        self.n_inputs = twin[1].in_features if isinstance(twin[1], nn.Linear) else None
        # SEAL's threads follow the audit's budget (one per pool worker), not every core.
        self.context = ts.context(ts.SCHEME_TYPE.CKKS, poly_degree,
                                  coeff_mod_bit_sizes=self.modulus,
                                  n_threads=torch.get_num_threads())
        self.context.global_scale = 2.0 ** scale_bits
        self.context.generate_relin_keys()  # squares need them; no rotation keys needed
        #: Seconds, upload bytes and download bytes of the first full batch served.
        self.full_pack: tuple[float, int, int] | None = None

    def encrypt(self, x: np.ndarray) -> Any:
        """The client's upload: one ciphertext per input value, one slot per row."""
        import tenseal as ts

        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        enc = ts.ckks_tensor(self.context, ts.plain_tensor(flat.tolist()), batch=True)
        return enc.reshape([1, flat.shape[1]])

    def evaluate(self, enc: Any) -> Any:
        """The server's work: the twin on ciphertexts (no secret key involved)."""
        for op, weight, bias in self.ops:
            if op == "linear":
                enc = enc.mm(weight) + bias
            else:
                enc = enc.square()
        return enc

    @staticmethod
    def decrypt(enc: Any, rows: int) -> np.ndarray:
        """The client's decryption: logits shaped ``(rows, classes)``."""
        out = np.asarray(enc.decrypt().tolist(), dtype=np.float64)
        return out.reshape(rows, -1)

    def logits(self, x: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Encrypt, evaluate, (optionally let the server add ``shift`` to the encrypted
        scores) and decrypt, ``slots`` rows per ciphertext. The first full ciphertext
        batch is timed and its sizes kept in :attr:`full_pack`."""
        import tenseal as ts

        out = []
        for start in range(0, len(x), self.slots):
            chunk = x[start:start + self.slots]
            began = time.perf_counter()
            upload = self.encrypt(chunk)
            enc = self.evaluate(upload)
            if shift is not None:  # adding a plaintext to a ciphertext needs no key
                enc = enc + ts.plain_tensor([np.asarray(shift, float).ravel().tolist()])
            out.append(self.decrypt(enc, len(chunk)))
            if self.full_pack is None and shift is None and len(chunk) == self.slots:
                self.full_pack = (time.perf_counter() - began, len(upload.serialize()),
                                  len(enc.serialize()))
        return np.concatenate(out) if out else np.zeros((0, 0))


def _content_key(batch: np.ndarray) -> str:
    return hashlib.sha256(str(batch.shape).encode() + batch.tobytes()).hexdigest()


class EncryptedTwin(Served, nn.Module):
    """The encrypted deployment: predictions are decrypted from real CKKS ciphertexts;
    under gradients, the plaintext twin (white-box through the twin)."""

    gradient_values_served = False

    def __init__(self, inner: nn.Module, twin: nn.Sequential, how: str, net: CkksNet,
                 rows: int, view_columns: np.ndarray) -> None:
        nn.Module.__init__(self)
        self.inner = inner
        self.twin = twin
        self.how = how
        self.net = net
        self.rows = rows
        self.batch_size = net.slots
        self.pack = net.slots
        self.view_columns = view_columns
        self._facts: dict[str, MetricValue] | None = None
        self._answers: dict[str, np.ndarray] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.twin(x)  # type: ignore[no-any-return]
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self.recording is not None:  # a rehearsal: note the batch, answer in plaintext
            self.recording.append(batch)
            with torch.no_grad():
                return self.twin(x)  # type: ignore[no-any-return]
        # A batch served again (every cell measures the clean test rows) is answered from
        # the decrypted result of its first encryption: same inputs, same deployment.
        key = _content_key(batch)
        if key not in self._answers:
            self._keep(key, self.net.logits(batch))
        return torch.as_tensor(self._answers[key], dtype=torch.float32)

    def answer_many(self, batches: list[np.ndarray]) -> None:
        """Encrypt the batches the rehearsed cells will ask for together, ``slots`` rows
        per ciphertext, and keep each batch's decrypted answer."""
        todo: dict[str, np.ndarray] = {}
        for batch in batches:
            key = _content_key(batch)
            if key not in self._answers:
                todo[key] = batch
        if not todo:
            return
        logits = self.net.logits(np.concatenate([b.reshape(len(b), -1)
                                                 for b in todo.values()]))
        start = 0
        for key, batch in todo.items():
            self._keep(key, logits[start:start + len(batch)])
            start += len(batch)

    def _keep(self, key: str, answer: np.ndarray) -> None:
        if len(self._answers) >= ANSWERS_KEPT:
            self._answers.pop(next(iter(self._answers)))
        self._answers[key] = answer

    def tamper(self, x: np.ndarray, shift: np.ndarray) -> np.ndarray:
        return self.net.logits(x, shift=shift)

    def observe(self, x: np.ndarray) -> np.ndarray:
        """Per row, byte statistics of the ciphertexts the server receives when the row
        is served alone: a 256-bin byte histogram and the length of each of the
        ciphertexts of its :data:`VIEW_VALUES` most variable input values."""
        flat = x.reshape(len(x), -1)
        rows = []
        for row in flat:
            feats = []
            for c in self.view_columns:
                enc = self.net.encrypt(np.array([[row[c]]]))
                data = np.frombuffer(enc.serialize(), dtype=np.uint8)
                feats.append(np.bincount(data, minlength=256) / max(len(data), 1))
                feats.append(np.array([len(data)], dtype=np.float64))
            rows.append(np.concatenate(feats))
        return np.array(rows)

    def facts(self, x: np.ndarray, scores: np.ndarray) -> dict[str, MetricValue]:
        if self._facts is None:
            self._facts = self._measure(np.asarray(x, np.float32), scores)
        return self._facts

    def _measure(self, x: np.ndarray, scores: np.ndarray) -> dict[str, MetricValue]:
        served = np.asarray(scores).argmax(axis=1)
        xt = torch.as_tensor(x)
        with torch.no_grad():
            model = self.inner(xt).argmax(dim=1).numpy()
            twin = self.twin(xt).argmax(dim=1).numpy()
        n = len(x)
        facts = {
            "fhe_agreement_model": proportion(int((served == model).sum()), n),
            "fhe_agreement_twin": proportion(int((served == twin).sum()), n),
            "fhe_twin_agreement": proportion(int((twin == model).sum()), n),
        }
        if n:
            start = time.perf_counter()
            self.net.logits(x[:1])
            facts["fhe_latency_single_ms"] = MetricValue(
                1e3 * (time.perf_counter() - start), 1)
            if self.net.full_pack is None:  # usually measured on the rehearsed cells
                self.net.logits(x[np.arange(self.net.slots) % n])
            assert self.net.full_pack is not None
            took, upload, download = self.net.full_pack
            slots = self.net.slots
            facts["fhe_latency_amortised_ms"] = MetricValue(1e3 * took / slots, slots)
            facts["fhe_upload_bytes"] = MetricValue(upload / slots, slots)
            facts["fhe_download_bytes"] = MetricValue(download / slots, slots)
        facts["fhe_security_bits"] = MetricValue(
            float(security_bits(self.net.poly_degree, sum(self.net.modulus))), 1)
        return facts


# -- the defense ---------------------------------------------------------------------


class FheDefense(Defense):
    """Encrypted inference: CKKS (TenSEAL) on an FHE-friendly twin of the model.

    Gilad-Bachrach et al., 2016, "CryptoNets: Applying Neural Networks to Encrypted Data
    with High Throughput and Accuracy"; Cheon, Kim, Kim and Song, 2017, "Homomorphic
    Encryption for Arithmetic of Approximate Numbers" (CKKS); Benaissa et al., 2021,
    "TenSEAL: A Library for Encrypted Tensor Operations Using Homomorphic Encryption".
    """

    name = "fhe"
    stage = Stage.WRAPPER
    fits_training_data = True  # the twin is distilled on the training inputs
    requires = ("tenseal",)
    extra = "fhe"
    # Adaptive: gradient attacks differentiate the plaintext twin, which computes what the
    # encrypted deployment serves to within CKKS precision; nothing is masked.
    adaptive = True
    evaluation = (
        "Encryption hides inputs from the server; it is not robustness. Evasion attacks "
        "run white-box through the plaintext twin (the client owns its inputs, and the "
        "weights are not secret from the evaluator), and every prediction (clean, "
        "adversarial, membership scores, probes) is decrypted from real CKKS ciphertexts, "
        "on the first `rows` test rows of the evaluated set (a batch served again, like "
        "the clean rows every cell measures, is answered from its first decryption). "
        "Membership inference runs on "
        "the decrypted scores. server-view measures what the server learns; server-tamper "
        "shows that encryption does not make its answers trustworthy."
    )
    twin: str = param("auto", "the FHE-friendly twin: 'mirror' copies the model's Linear "
                      "layers with square activations; 'compact' is inputs -> hidden -> "
                      "square -> classes; 'auto' mirrors when it can",
                      choices=("auto", "mirror", "compact"))
    hidden: int = param(32, "hidden width of the compact twin", ge=1, le=4096)
    steps: int = param(800, "distillation steps (batches of 128 training inputs)", ge=0)
    poly_modulus_degree: int = param(8192, "CKKS polynomial degree (slots = degree / 2)",
                                     choices=(4096, 8192, 16384, 32768))
    scale_bits: int = param(40, "bits of the CKKS scale (one modulus prime per level)",
                            ge=20, le=60)
    outer_bits: int = param(49, "bits of the first and the special modulus primes",
                            ge=20, le=60)
    rows: int = param(256, "the most test rows an attack cell sends through encryption",
                      ge=1)

    def validate(self) -> None:
        bits = 2 * self.outer_bits + 3 * self.scale_bits  # the smallest twin: 3 levels
        most = MAX_MODULUS_BITS[self.poly_modulus_degree][128]
        if bits > most:
            raise ConfigError(
                f"defense 'fhe': poly_modulus_degree {self.poly_modulus_degree} with "
                f"scale_bits {self.scale_bits} and outer_bits {self.outer_bits} needs at "
                f"least {bits} modulus bits, above the {most} bits that keep 128-bit "
                "security (HE standard); use smaller primes or a larger degree")
        if self.outer_bits < self.scale_bits:
            raise ConfigError("defense 'fhe': outer_bits must be at least scale_bits "
                              "(the first prime holds the decrypted result)")

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        if model.access < Access.SCORES:
            raise NotApplicable("distilling the twin needs the model's scores")
        seed = int(rng.integers(2**31))
        cache: dict[int, EncryptedTwin] = {}
        n_inputs = int(np.prod(model.input_shape))
        variance = dataset.x_train.reshape(len(dataset.x_train), -1).var(axis=0)
        view = np.argsort(-variance, kind="stable")[:VIEW_VALUES]

        def serve(inner: nn.Module) -> EncryptedTwin:
            if id(inner) not in cache:
                with torch.random.fork_rng():  # the twin's initial weights, from the seed
                    torch.manual_seed(seed)
                    # Mirrored from the network's own layers (on CUDA, ``inner`` is
                    # the adapter that serves it CPU batches).
                    twin, how = self._twin(network(inner), n_inputs, model.n_classes)
                distill(twin, inner, dataset.x_train, steps=self.steps, seed=seed)
                net = CkksNet(twin, self.poly_modulus_degree, self.scale_bits,
                              self.outer_bits)
                cache[id(inner)] = EncryptedTwin(inner, twin, how, net, self.rows, view)
            return cache[id(inner)]

        return model.deploy(serve=serve)

    def _twin(self, inner: nn.Module, n_inputs: int,
              n_classes: int) -> tuple[nn.Sequential, str]:
        """The twin to distil, and a sentence saying which and why."""
        most = MAX_MODULUS_BITS[self.poly_modulus_degree][128]
        levels = (most - 2 * self.outer_bits) // self.scale_bits
        if self.twin != "compact":
            twin, why = mirror(inner)
            if twin is not None and depth(twin) > levels:
                why = (f"mirroring needs {depth(twin)} multiplicative levels; these CKKS "
                       f"parameters allow {levels} at 128-bit security")
                twin = None
            if twin is not None:
                return twin, why
            if self.twin == "mirror":
                raise NotApplicable(f"the twin cannot mirror the model: {why}")
            how = f"compact {n_inputs}-{self.hidden}-{n_classes} twin (cannot mirror: {why})"
        else:
            how = f"compact {n_inputs}-{self.hidden}-{n_classes} twin (chosen)"
        return compact(n_inputs, self.hidden, n_classes), how


# -- what it costs ---------------------------------------------------------------------


class FheAgreementModel(Fact):
    """Share of test rows where the encrypted deployment predicts the supplied model's
    class (plaintext), with a Wilson interval."""

    name = "fhe_agreement_model"
    title = "FHE agreement with the model"
    bounds = (0.0, 1.0)
    format = "percent"


class FheAgreementTwin(Fact):
    """Share of test rows where the encrypted deployment predicts what its twin predicts
    in plaintext: what CKKS's approximation costs, with a Wilson interval."""

    name = "fhe_agreement_twin"
    title = "FHE agreement with the plaintext twin"
    bounds = (0.0, 1.0)
    format = "percent"


class FheTwinAgreement(Fact):
    """Share of test rows where the plaintext twin predicts the supplied model's class:
    what replacing the model by an FHE-friendly twin costs, with a Wilson interval."""

    name = "fhe_twin_agreement"
    title = "Twin agreement with the model (plaintext)"
    bounds = (0.0, 1.0)
    format = "percent"


class FheLatencySingle(Fact):
    """Milliseconds to encrypt, evaluate and decrypt one input sent alone (one run)."""

    name = "fhe_latency_single_ms"
    title = "FHE latency, one input (ms)"
    higher_is_better = False


class FheLatencyAmortised(Fact):
    """Milliseconds per input to encrypt, evaluate and decrypt a batch that fills every
    ciphertext slot (n = the batch)."""

    name = "fhe_latency_amortised_ms"
    title = "FHE latency per input, full batch (ms)"
    higher_is_better = False


class FheUploadBytes(Fact):
    """Bytes of ciphertext the client uploads per input, at full packing."""

    name = "fhe_upload_bytes"
    title = "FHE upload per input (bytes)"
    higher_is_better = False


class FheDownloadBytes(Fact):
    """Bytes of ciphertext the client downloads per input, at full packing."""

    name = "fhe_download_bytes"
    title = "FHE download per input (bytes)"
    higher_is_better = False


class FheSecurity(Fact):
    """The security level (bits) of the CKKS parameters by the HE standard's tables:
    128, 192 or 256."""

    name = "fhe_security_bits"
    title = "FHE security level (bits)"
    higher_is_better = True


FACTS = (FheAgreementModel, FheAgreementTwin, FheTwinAgreement, FheLatencySingle,
         FheLatencyAmortised, FheUploadBytes, FheDownloadBytes, FheSecurity)


@hookimpl
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    register(FheDefense)


@hookimpl
def register_metrics(register: Callable[[type[Fact]], None]) -> None:
    for cls in FACTS:
        register(cls)



@hookimpl
def report_sections(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """FHE's three answers (same answers, what it costs, what it stops and what it does
    not), one line each in the report's Summary, for every fhe defense point run."""
    return summary_lines(result)

"""The fhe defense on the real digits CNN: real CKKS encryption (TenSEAL), the twin it
serves, what it refuses, what it costs, and the confidentiality attacks beside it.

Each encrypted batch of the 64-32-10 twin takes about 2 s on 2 cores whatever its size
(one slot per input), so the tests share one defended model and a few batches.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from gauntlet import Access, ConfigError, NotApplicable
from gauntlet.executor import SerialExecutor
from gauntlet.plan import CHECK_ROWS, Selection, plan
from gauntlet.plugins import fhe
from gauntlet.plugins.fhe import CkksNet, FheDefense, Square, compact, distill, mirror
from gauntlet.registry import make_registry
from gauntlet.run import Runner

pytest.importorskip("tenseal")

ROWS = 96  # the row limit the tests give the defense: two batches' worth of work at most
STEPS = 300  # distillation steps: enough for > 90% twin agreement on digits


@pytest.fixture(scope="module")
def defended(digits, digits_model):
    rng = np.random.default_rng(0)
    return FheDefense(rows=ROWS, steps=STEPS).apply(digits_model, digits, rng)


@pytest.fixture(scope="module")
def served(defended):
    return defended._served


def test_encrypted_logits_match_the_plaintext_twin_within_ckks_precision(digits, served):
    """Decrypted logits equal the plaintext twin's to 1e-3. Why 1e-3: with a 2**40 scale
    each rescale rounds to about 2**-40 * sqrt(8192) ~ 1e-10 relative, amplified through
    two 64x32 / 32x10 layers and a square by the weights' and activations' size (logits
    of tens): measured errors are ~5e-5, so 1e-3 leaves 20x headroom and is still far
    below the gap between a row's top two logits that would change its class."""
    x = digits.x_test[:ROWS]
    encrypted = served.net.logits(x)
    with torch.no_grad():
        plain = served.twin(torch.as_tensor(x)).double().numpy()
    assert encrypted.shape == plain.shape == (ROWS, 10)
    assert np.abs(encrypted - plain).max() < 1e-3
    assert (encrypted.argmax(1) == plain.argmax(1)).all()


def test_the_deployment_serves_decrypted_scores_and_differentiates_the_twin(digits, defended,
                                                                          served):
    x = digits.x_test[:8]
    proba = defended.predict(x)  # through encryption: no gradients asked
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        twin = torch.softmax(served.twin(torch.as_tensor(x)), 1).numpy()
    assert np.abs(proba - twin).max() < 1e-3
    # Gradients are the plaintext twin's (white-box through the twin): compare with autograd.
    y = digits.y_test[:8]
    grad = defended.loss_gradient(x, y)
    xt = torch.as_tensor(x).requires_grad_(True)
    loss = nn.functional.cross_entropy(served.twin(xt), torch.as_tensor(y))
    (expected,) = torch.autograd.grad(loss, xt)
    assert np.allclose(grad, expected.numpy(), atol=1e-6)
    assert defended.access is Access.GRADIENTS and defended.row_limit == ROWS


def test_the_cnn_is_served_by_a_compact_twin_and_says_why(served):
    assert "cannot mirror" in served.how and "Conv2d" in served.how
    assert [type(m) for m in served.twin] == [nn.Flatten, nn.Linear, Square, nn.Linear]
    assert served.net.modulus == [49, 40, 40, 40, 49]


def test_an_mlp_is_mirrored_from_its_own_weights(digits):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.1),
                        nn.Linear(16, 10))
    twin, how = mirror(mlp)
    assert twin is not None and "mirrors" in how
    assert [type(m) for m in twin] == [nn.Flatten, nn.Linear, Square, nn.Linear]
    assert torch.equal(twin[1].weight, mlp[1].weight)
    assert fhe.depth(twin) == 3


def test_twin_mirror_refuses_a_model_it_cannot_mirror(digits, digits_model):
    with pytest.raises(NotApplicable, match="cannot mirror.*Conv2d"):
        FheDefense(twin="mirror", steps=0).apply(digits_model, digits,
                                                 np.random.default_rng(0))


@pytest.mark.parametrize("degree, scale, outer", [(8192, 60, 60), (4096, 40, 49),
                                                  (8192, 50, 59)])
def test_parameters_below_128_bit_security_are_refused(degree, scale, outer):
    bits = 2 * outer + 3 * scale
    assert bits > fhe.MAX_MODULUS_BITS[degree][128]
    with pytest.raises(ConfigError, match="128-bit security"):
        FheDefense(poly_modulus_degree=degree, scale_bits=scale, outer_bits=outer)


def test_the_default_parameters_reach_128_bit_security():
    assert fhe.security_bits(8192, 218) == 128
    assert fhe.security_bits(8192, 219) == 0
    assert fhe.security_bits(8192, 150) == 192
    FheDefense()  # no error


@pytest.mark.slow
def test_cells_against_fhe_report_numbers_and_the_deployment_s_facts(digits, digits_model):
    registry = make_registry()
    cells = plan(registry, [Selection("none"), Selection("fhe", {"rows": ROWS,
                                                                 "steps": STEPS})],
                 [Selection("fgsm", {"eps": 0.1}), Selection("server-view", {"rows": 40}),
                  Selection("server-tamper", {"rows": ROWS})])
    runner = Runner(digits_model, digits, registry.metrics.values(), seed=0)
    results = {(c.defense.name, c.attack.name): runner.run_cell(c) for c in cells}
    assert all(r.status == "ok" for r in results.values()), \
        {k: r.reason for k, r in results.items() if r.status != "ok"}
    clean = results["fhe", "clean"]
    assert clean.n == ROWS
    facts = clean.metrics
    assert facts["fhe_agreement_twin"]["value"] >= 0.99
    assert facts["fhe_twin_agreement"]["value"] >= 0.85
    assert facts["fhe_security_bits"]["value"] == 128
    assert facts["fhe_latency_amortised_ms"]["value"] < facts["fhe_latency_single_ms"]["value"]
    assert facts["fhe_upload_bytes"]["value"] > facts["fhe_download_bytes"]["value"] > 0
    # Evasion against fhe runs white-box through the twin and its numbers are reported.
    fgsm = results["fhe", "fgsm"]
    assert fgsm.n == ROWS and 0 <= fgsm.metrics["robust_accuracy"]["value"] < \
        clean.metrics["clean_accuracy"]["value"]
    # A curious server: everything in the clear, chance under encryption.
    plain, enc = results["none", "server-view"], results["fhe", "server-view"]
    assert plain.metrics["server_recovery"]["value"] == 1.0
    chance = enc.metrics["server_chance"]["value"]
    recovered = enc.metrics["server_recovery"]
    assert recovered["value"] <= chance + 0.15 and recovered["low"] <= chance
    # A malicious server moves every answer, encrypted or not.
    assert results["fhe", "server-tamper"].metrics["tamper_success"]["value"] == 1.0
    assert results["none", "server-tamper"].metrics["tamper_success"]["value"] == 1.0


def test_clean_accuracy_under_fhe_is_the_accuracy_of_hand_decrypted_predictions(
        digits, defended, served):
    """Reference computation: encrypt, evaluate, decrypt with the engine directly."""
    registry = make_registry()
    cells = plan(registry, [Selection("fhe", {"rows": ROWS, "steps": STEPS})], [])
    runner = Runner(defended, digits, [registry.metrics["clean_accuracy"]], seed=0)
    runner._defended[cells[0].defense_key] = defended
    result = runner.run_cell(cells[0])
    logits = served.net.logits(digits.x_test[:ROWS])
    expected = float((logits.argmax(1) == digits.y_test[:ROWS]).mean())
    assert math.isclose(result.metrics["clean_accuracy"]["value"], expected)


def test_tampering_adds_to_the_encrypted_scores(digits, served):
    x = digits.x_test[:4]
    shift = np.zeros(10)
    shift[3] = 5.0
    honest, tampered = served.net.logits(x), served.net.logits(x, shift=shift)
    assert np.abs((tampered - honest) - shift).max() < 1e-3


def test_without_the_extra_the_defense_is_unavailable_with_the_install_command(
        monkeypatch, digits, digits_model):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tenseal" else real(name, *a))
    why = FheDefense.unavailable()
    assert why == ("defense 'fhe' needs tenseal, which is not installed: "
                   'pip install "ml-gauntlet[fhe]"')
    registry = make_registry()
    row = next(r for r in registry.describe() if r["name"] == "fhe")
    assert row["unavailable"] == why
    cells = plan(registry, [Selection("fhe")], [])
    result = Runner(digits_model, digits, [], seed=0).run_cell(cells[0])
    assert result.status == "not_applicable" and result.reason == why


def test_distillation_is_deterministic_for_a_seed(digits, digits_model):
    twins = []
    for _ in range(2):
        torch.manual_seed(1)  # the twin's initial weights
        twin = compact(64, 8, 10)
        distill(twin, digits_model._base, digits.x_train[:200], steps=20, seed=3)
        twins.append(twin)
    assert all(torch.equal(a, b) for a, b in zip(twins[0].state_dict().values(),
                                                 twins[1].state_dict().values()))


def test_ckks_net_consumes_one_level_per_linear_layer_and_square():
    twin = compact(4, 3, 2)
    net = CkksNet(twin, 8192, 40, 49)
    assert net.levels == 3 and net.slots == 4096


def test_an_audit_sends_its_cells_rows_in_one_encrypted_batch(monkeypatch, digits, defended,
                                                             served):
    """Five cells of ROWS rows each fit one ciphertext's slots: the executor's rehearsal
    has them encrypted together, not one ~2 s batch per cell."""
    registry = make_registry()
    cells = plan(registry, [Selection("fhe", {"rows": ROWS, "steps": STEPS})],
                 [Selection("fgsm", {"eps": [0.05, 0.1, 0.2]}), Selection("noise",
                                                                          {"eps": 0.1})])
    runner = Runner(defended, digits,
                    [registry.metrics["clean_accuracy"], registry.metrics["robust_accuracy"]],
                    seed=0)
    runner._defended[cells[0].defense_key] = defended
    monkeypatch.setattr(served, "_answers", {})
    sizes: list[int] = []
    logits = served.net.logits
    monkeypatch.setattr(served.net, "logits",
                        lambda x, shift=None: sizes.append(len(x)) or logits(x, shift))
    results = SerialExecutor(progress=False).run(runner, cells)
    assert [r.status for r in results] == ["ok"] * 5
    # One batch for all five cells' rows and the clean cell's checklist sample; the rest
    # are its latency facts (one row alone, one full pack) if no earlier test took them.
    assert [n for n in sizes if 1 < n < served.net.slots] == [5 * ROWS + CHECK_ROWS]
    clean = results[0]
    x = digits.x_test[:ROWS]
    by_hand = float((logits(x).argmax(1) == digits.y_test[:ROWS]).mean())
    assert math.isclose(clean.metrics["clean_accuracy"]["value"], by_hand)
    assert all(0 <= r.metrics["robust_accuracy"]["value"] <= 1 for r in results[1:])

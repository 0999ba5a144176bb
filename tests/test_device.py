"""The audit's device (gauntlet.device): choosing it, CPU audits unchanged by it, and,
where torch sees a GPU, models, trainings and ART computing there with the CPU's numbers."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import gauntlet
from gauntlet import Model, device
from gauntlet.errors import ConfigError
from gauntlet.model import _on_device_class, network, weights_sha256
from gauntlet.training import device_of, on_audit_device, pgd_linf, train_classifier

CUDA = torch.cuda.is_available()


@pytest.fixture
def on_cpu_after() -> Iterator[None]:
    """Whatever the test selects, the process is back on the CPU after it (the device is
    process-wide: the next test in this worker must not inherit CUDA)."""
    try:
        yield
    finally:
        device.select("cpu")


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def small_model(module: nn.Module) -> Model:
    return Model(module, input_shape=(1, 8, 8), n_classes=10)


# -- choosing the device ----------------------------------------------------------------


def test_auto_is_the_cpu_without_cuda():
    if CUDA:
        pytest.skip("torch sees a CUDA device: auto chooses it")
    assert device.resolve("auto") == "cpu"
    assert device.resolve("cpu") == "cpu"


def test_cuda_without_a_gpu_is_a_config_error():
    if CUDA:
        pytest.skip("torch sees a CUDA device")
    with pytest.raises(ConfigError, match="auto"):
        device.resolve("cuda")


def test_an_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="tpu"):
        device.resolve("tpu")


def test_select_sets_the_current_device(on_cpu_after):
    assert device.select("cpu") == "cpu"
    assert device.current() == "cpu"


# -- on the CPU, nothing changes ---------------------------------------------------------


def test_cpu_predictions_and_weights_hash_unchanged(digits, on_cpu_after):
    module = small_net()
    before = small_model(module)
    x = digits.x_test[:50]
    scores, grads = before.predict(x), before.loss_gradient(x, digits.y_test[:50])
    sha = weights_sha256(before)
    device.select("cpu")
    after = small_model(module)
    np.testing.assert_array_equal(after.predict(x), scores)
    np.testing.assert_array_equal(after.loss_gradient(x, digits.y_test[:50]), grads)
    assert weights_sha256(after) == sha
    assert device_of(module).type == "cpu"


def test_cpu_paths_call_the_module_itself(on_cpu_after):
    """No adapter on the CPU: the composed paths are the module (speed: bench_fgsm)."""
    device.select("cpu")
    module = small_net()
    model = small_model(module)
    assert model._forward is module and model._gradient_path is module
    assert network(module) is module


def test_the_device_adapter_is_transparent(digits):
    """The CUDA path's adapter, run on the CPU: same logits, same input gradients."""
    module = small_net()
    adapter = _on_device_class()(module)
    x = torch.from_numpy(digits.x_test[:20]).requires_grad_(True)
    (g1,) = torch.autograd.grad(module(x).sum(), x)
    out = adapter(x)
    (g2,) = torch.autograd.grad(out.sum(), x)
    assert out.device == x.device
    torch.testing.assert_close(out, module(x), rtol=0, atol=0)
    torch.testing.assert_close(g2, g1, rtol=0, atol=0)
    assert network(adapter) is module
    assert list(adapter.module.state_dict()) == list(module.state_dict())


def test_a_library_moving_the_differentiable_module_moves_nothing(digits):
    """ART moves the module it is given to its device: the model's parts stay put."""
    model = small_model(small_net())
    net = model.differentiable()
    net.to(torch.float64)
    assert next(model._base.parameters()).dtype == torch.float32
    assert model.labels(digits.x_test[:5]).shape == (5,)


def test_cpu_training_stays_on_the_cpu(digits, on_cpu_after):
    device.select("cpu")
    module = small_net()
    with on_audit_device(module) as at:
        assert at.type == "cpu"
    train_classifier(module, digits.x_train[:128], digits.y_train[:128], 0, epochs=1)
    assert device_of(module).type == "cpu"
    assert device_of(nn.Flatten()).type == "cpu"  # no parameters: the CPU
    x = torch.from_numpy(digits.x_test[:8])
    adv = pgd_linf(module, x, torch.from_numpy(digits.y_test[:8]), 0.1, 0.05, 2, (0.0, 1.0),
                   torch.Generator().manual_seed(0))
    assert adv.device == x.device and float((adv - x).abs().max()) <= 0.1 + 1e-6


# -- on a GPU ----------------------------------------------------------------------------


@pytest.fixture
def fp32_cuda() -> Iterator[None]:
    """Full-precision float32 on the GPU while the test runs: cuDNN's default TF32
    convolutions round to 10-bit mantissas, enough to move a logit by 1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_model_on_cuda_answers_on_the_cpu(digits, on_cpu_after, fp32_cuda):
    module = small_net()
    on_cpu = small_model(module)
    x, y = digits.x_test[:50], digits.y_test[:50]
    scores, grads, sha = on_cpu.predict(x), on_cpu.loss_gradient(x, y), weights_sha256(on_cpu)
    keys = list(module.state_dict())
    device.select("cuda")
    on_gpu = small_model(module)
    assert device_of(module).type == "cuda"
    np.testing.assert_allclose(on_gpu.predict(x), scores, atol=1e-5)
    np.testing.assert_allclose(on_gpu.loss_gradient(x, y), grads, atol=1e-5)
    assert weights_sha256(on_gpu) == sha
    assert list(module.state_dict()) == keys
    feats = on_gpu.features(x)
    assert feats.shape == (50, 16)
    # The model made on the CPU follows: it moves its module at its next query...
    np.testing.assert_allclose(on_cpu.predict(x), scores, atol=1e-5)
    # ... and back when the process returns to the CPU.
    device.select("cpu")
    np.testing.assert_array_equal(on_gpu.predict(x), scores)
    assert device_of(module).type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_art_on_cuda_leaves_the_defenses_on_the_cpu(digits, on_cpu_after, fp32_cuda):
    device.select("cuda")
    noise = nn.Identity()
    noise.register_buffer("scale", torch.ones(()))
    model = small_model(small_net()).deploy(pre=noise)
    classifier = model.to_art()
    assert classifier.device.type == "cuda"
    assert noise.scale.device.type == "cpu"
    x, y = digits.x_test[:20], digits.y_test[:20]
    np.testing.assert_allclose(classifier.predict(x), model.logits(x), atol=1e-5)
    onehot = np.eye(10, dtype=np.float32)[y]
    np.testing.assert_allclose(classifier.loss_gradient(x, onehot), model.loss_gradient(x, y),
                               atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_training_on_cuda_returns_the_module_where_it_was(digits, on_cpu_after):
    device.select("cuda")
    module = small_net()
    with on_audit_device(module) as at:
        assert at.type == "cuda" and device_of(module).type == "cuda"
    assert device_of(module).type == "cpu"
    train_classifier(module, digits.x_train[:256], digits.y_train[:256], 0, epochs=2)
    assert device_of(module).type == "cpu"
    x = torch.from_numpy(digits.x_test[:8])
    adv = pgd_linf(module.cuda(), x, torch.from_numpy(digits.y_test[:8]), 0.1, 0.05, 2,
                   (0.0, 1.0), torch.Generator().manual_seed(0))
    assert adv.device == x.device


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_an_audit_on_cuda_gives_the_cpu_numbers(digits, digits_model, on_cpu_after,
                                                fp32_cuda):
    def run(where: str):
        device.select(where)
        result = gauntlet.audit(model=digits_model, data=digits, attacks=["fgsm", "pgd"],
                                defenses=["none", "input-noise"], samples=60, seed=0,
                                device=where, cache=False)
        return result.table.set_index(["cell_id", "metric"]).sort_index()

    try:
        cpu = run("cpu")
        cuda = run("cuda")
    finally:
        device.select("cpu")
    assert list(cuda.index) == list(cpu.index)
    assert list(cuda["status"]) == list(cpu["status"])
    assert (cpu["status"] == "ok").any()
    np.testing.assert_allclose(cuda["value"].to_numpy(float), cpu["value"].to_numpy(float),
                               rtol=0, atol=1e-4, equal_nan=True)


def test_limit_threads_holds_torch_blas_and_openmp_to_the_budget_and_restores_them(
        monkeypatch):
    import os

    import sklearn.linear_model  # noqa: F401 - loads scikit-learn's OpenMP and scipy's BLAS
    from threadpoolctl import threadpool_info

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    before = {(p["filepath"], p["num_threads"]) for p in threadpool_info()}
    restore = device.limit_threads(1)
    try:
        assert torch.get_num_threads() == 1
        pools = threadpool_info()
        assert pools and all(p["num_threads"] == 1 for p in pools)
        assert {p["internal_api"] for p in pools} >= {"openblas", "openmp"}
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # for libraries loaded later
    finally:
        restore()
    assert torch.get_num_threads() == 2
    assert {(p["filepath"], p["num_threads"]) for p in threadpool_info()} == before
    assert "OPENBLAS_NUM_THREADS" not in os.environ

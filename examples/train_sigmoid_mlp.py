"""Train the 784-200-10 sigmoid MLP of ``sigmoid_mlp.py`` on Fashion-MNIST and write its
weights as safetensors, for ``fashion-mnist-mlp.toml`` (weights are not committed).

    python examples/train_sigmoid_mlp.py            # ~1 min on 2 cores

reads ``/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist) with
Gauntlet's own IDX loader and writes
``gauntlet-report/fashion-mnist-mlp/sigmoid-mlp.safetensors``. Training is Gauntlet's
loop (Adam, cross-entropy, shuffled minibatches of 64), seeded, so the same command gives
the same weights on the same machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for sigmoid_mlp

DATA = "/usr/share/datasets/fashion-mnist"
OUT = Path("gauntlet-report/fashion-mnist-mlp/sigmoid-mlp.safetensors")


def train(data: str = DATA, out: Path = OUT, *, epochs: int = 10, lr: float = 1e-3,
          seed: int = 0) -> tuple[Path, float]:
    """Train on the IDX set in ``data``, write the state_dict to ``out``; return the path
    and the clean test accuracy."""
    import torch
    from safetensors.torch import save_file
    from sigmoid_mlp import make_mlp

    from gauntlet.plugins.datasets import load_idx
    from gauntlet.training import train_classifier

    dataset = load_idx(data, {})
    torch.manual_seed(seed)
    model = make_mlp(input_shape=dataset.input_shape, n_classes=dataset.n_classes)
    train_classifier(model, dataset.x_train, dataset.y_train, seed, epochs=epochs, lr=lr)
    with torch.no_grad():
        pred = model(torch.as_tensor(dataset.x_test)).argmax(dim=1).numpy()
    accuracy = float((pred == dataset.y_test).mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return out, accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA, help="IDX data directory")
    parser.add_argument("--out", type=Path, default=OUT, help="safetensors file to write")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    path, accuracy = train(args.data, args.out, epochs=args.epochs)
    print(f"wrote {path} (clean test accuracy {accuracy:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

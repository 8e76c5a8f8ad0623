"""Train an MLP on scikit-learn's digits and watch per-class accuracy (``python examples/train_digits.py``).

Open the logs with ``tensorboard --logdir runs/example_digits``.
"""

import lightning as L

from lightning_pareto import ClassifierModule, PerClassAccuracy
from lightning_pareto.data import DigitsDataModule
from lightning_pareto.nets import MLP


def main() -> None:
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64, label_noise=0.1, seed=0)  # 10% of training labels flipped
    model = ClassifierModule(MLP(64, 10, hidden=(32,)), num_classes=data.num_classes, class_names=data.class_names)
    monitor = PerClassAccuracy(log_figure_every_n_epochs=10)
    trainer = L.Trainer(
        max_epochs=30, default_root_dir="runs/example_digits", log_every_n_steps=5, callbacks=[monitor]
    )  # 17 batches an epoch
    trainer.fit(model, data)
    print(monitor.summary_table())
    print(f"{len(data.flipped_indices)} training labels were flipped (data.flipped_indices).")


if __name__ == "__main__":
    main()

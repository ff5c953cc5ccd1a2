"""``python -m vaegan.train.cli_entry ...`` runs ``vaegan-train`` (what ``torchrun -m`` needs):
``torchrun --nproc_per_node 2 -m vaegan.train.cli_entry vaegan --epochs 1``."""

from .cli import train_cli

if __name__ == "__main__":
    train_cli()

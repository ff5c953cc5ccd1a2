"""PyTorch side of vaegan: data, models, training, attacks, the reference purifier and evaluation."""

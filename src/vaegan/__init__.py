"""vaegan: a VAE-GAN adversarial purifier, trained in PyTorch, deployed with ONNX Runtime / TensorRT.

Subpackages (each importable on its own; only ``vaegan.train`` and ``vaegan.export`` import torch):

- ``vaegan.train``   -- data, models, training, attacks, the reference purifier, evaluation (PyTorch)
- ``vaegan.export``  -- ONNX / TensorRT export of E, G, D, their input-gradient graphs and the fused purifier
- ``vaegan.runtime`` -- torch-free runners and purification loop over onnxruntime / TensorRT
"""

__version__ = "0.1.0"

"""vaegan: a VAE-GAN adversarial purifier, trained in PyTorch, deployed with ONNX Runtime / TensorRT.

Subpackages, in layers (train and runtime import neither each other nor the rest; export builds on both,
adaptive on all three, serve on runtime; ``vaegan.runtime`` imports no torch):

- ``vaegan.adaptive`` -- adaptive attacks on the whole defended pipeline (above train, export and runtime)
- ``vaegan.export``   -- ONNX / TensorRT export of E, G, D, their input-gradient graphs and the fused purifier
- ``vaegan.train``    -- data, models, training, attacks, the reference purifier, evaluation (PyTorch)
- ``vaegan.runtime``  -- torch-free runners and purification loop over onnxruntime / TensorRT
- ``vaegan.serve``    -- ``vaegan-serve``: the runtime's ``Defense`` as an HTTP service on Ray Serve (extra ``serve``)
"""

__version__ = "0.1.0"

"""What a replica runs: the ONE adapter between the service and the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Result:
    labels: np.ndarray
    class_names: list
    confidence: np.ndarray
    loss: np.ndarray
    purified: np.ndarray


class _Interim:
    """Stand-in for ``vaegan.runtime.defense.Defense`` until it lands: the runtime's purifier and classifier."""

    def __init__(self, artifacts_dir, backend="auto", threads=None):
        from vaegan.runtime.artifacts import load_artifacts
        from vaegan.runtime.purify import make_classifier, make_purifier, resolve_backend

        self.arts = load_artifacts(artifacts_dir)
        backend = resolve_backend(backend, self.arts)
        self.purifier = make_purifier(self.arts, backend, threads=threads)
        self.classifier = make_classifier(self.arts, backend, threads=threads)
        self.purifier.activate()
        self.classifier.runner.activate()

    def __call__(self, frames):
        from PIL import Image

        from vaegan.runtime.io import to_model_input

        x = np.stack([to_model_input(Image.fromarray(f), self.arts.preprocess) for f in frames])
        res = self.purifier.purify(x)
        ids, conf, _ = self.classifier(res.purified, self.arts.max_batch)
        return _Result(ids, [self.arts.classes[int(i)] for i in ids], conf, res.loss, res.purified)

    def close(self):
        self.classifier.runner.deactivate()
        self.purifier.deactivate()


def open_defense(artifacts_dir, backend: str = "auto", threads: int | None = None):
    """The runtime's defended classifier over ``artifacts_dir``: ``d(frames)`` takes a list of H x W (x C) arrays and
    returns ``labels``, ``class_names``, ``confidence``, ``loss`` and ``purified``; ``d.close()`` frees it."""
    return _Interim(artifacts_dir, backend=backend, threads=threads)

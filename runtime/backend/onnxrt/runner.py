"""``OnnxrtRunner``: the runner interface over an onnxruntime ``InferenceSession``."""

from __future__ import annotations

import numpy as np

from ..base import BaseRunner, TensorMeta

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxrtRunner(BaseRunner):
    """Runs an onnxruntime session. ``sess`` is a session or a loader that builds one (e.g. ``SessionFromOnnx``)."""

    def __init__(self, sess, name: str | None = None):
        path = getattr(sess, "path", None)
        super().__init__(name or f"onnxrt:{path.name if path is not None else 'session'}")
        self._sess_or_loader = sess
        self.sess = None
        self.output_names: list[str] = []

    def activate_impl(self) -> None:
        s = self._sess_or_loader
        self.sess = s() if callable(s) else s
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        metas = []
        for i in self.sess.get_inputs():
            if i.type not in _ORT_TYPES:
                raise TypeError(f"{self.name}: input {i.name} has unsupported type {i.type}")
            shape = tuple(d if isinstance(d, int) else None for d in i.shape)
            metas.append(TensorMeta(i.name, np.dtype(_ORT_TYPES[i.type]), shape))
        return metas

    def providers(self) -> list[str]:
        self._require_active()
        return list(self.sess.get_providers())

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.sess.run(self.output_names, feed)
        return dict(zip(self.output_names, outs))

    def deactivate_impl(self) -> None:
        self.sess = None

"""The few CUDA runtime calls the TensorRT runner needs, through cuda-python (``cuda.bindings.runtime``)."""

from __future__ import annotations

from ...errors import BackendUnavailableError

INSTALL_HINT = "install the GPU extra: pip install 'vaegan[gpu]' (tensorrt>=10, cuda-python>=12) on a machine with an NVIDIA GPU"


def cudart():
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as rt  # older cuda-python
        except ImportError as e:
            raise BackendUnavailableError(f"cuda-python is not installed ({e}); {INSTALL_HINT}") from None
    return rt


def check(result):
    """cuda-python calls return ``(err, *values)``; raise on an error, return the values."""
    rt = cudart()
    err, *values = result
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        _, name = rt.cudaGetErrorName(err)
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    rt = cudart()
    err, n = rt.cudaGetDeviceCount()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        return 0
    return int(n)


class DeviceBuffer:
    """A device allocation that grows on demand (never shrinks)."""

    def __init__(self):
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(check(cudart().cudaMalloc(max(nbytes, 1))))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr))
        self.ptr = 0
        self.nbytes = 0

"""``TrtRunner``: the runner interface over a TensorRT 10 engine, with device buffers through cuda-python.

Per ``infer``: set the input shapes, copy host inputs to device buffers (grown on demand, reused), run on one CUDA
stream, copy the outputs back, synchronise. Shape-tensor inputs (e.g. the purify graph's ``steps`` trip count) live
in host memory as TensorRT requires. With ``cuda_graph=True`` the enqueue of each distinct (shapes, shape-tensor
values) combination is captured once into a CUDA graph and replayed afterwards: it removes the per-layer launch
overhead, which dominates for these small networks at small batch.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..base import BaseRunner, TensorMeta
from .cuda import DeviceBuffer, check, cudart
from .loader import import_tensorrt


class TrtRunner(BaseRunner):
    def __init__(self, engine, name: str | None = None, cuda_graph: bool = True):
        path = getattr(engine, "path", None)
        super().__init__(name or f"trt:{path.name if path is not None else 'engine'}")
        self._engine_or_loader = engine
        self.cuda_graph = cuda_graph
        self.engine = None
        self.context = None
        self.stream = None
        self._buffers: dict[str, DeviceBuffer] = {}
        self._host_shape_inputs: dict[str, np.ndarray] = {}
        self._graphs: dict[tuple, object] = {}
        self.cuda_graph_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_tensorrt()
        e = self._engine_or_loader
        self.engine = e() if callable(e) else e
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{self.name}: could not create an execution context (out of GPU memory?)")
        self.stream = check(cudart().cudaStreamCreate())
        self._inputs, self._outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(name)
            (self._inputs if mode == trt.TensorIOMode.INPUT else self._outputs).append(name)
            self._buffers[name] = DeviceBuffer()

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        trt = import_tensorrt()
        metas = []
        for name in self._inputs:
            shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            metas.append(TensorMeta(name, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))), shape))
        return metas

    def deactivate_impl(self) -> None:
        rt = cudart()
        for g in self._graphs.values():
            check(rt.cudaGraphExecDestroy(g))
        self._graphs.clear()
        for b in self._buffers.values():
            b.free()
        self._buffers.clear()
        if self.stream is not None:
            check(rt.cudaStreamDestroy(self.stream))
        self.stream = None
        self.context = None
        self.engine = None

    # -- inference -------------------------------------------------------------------------------------------
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt = import_tensorrt()
        rt = cudart()
        key = []
        for name in self._inputs:
            a = np.asarray(feed[name], order="C")  # not ascontiguousarray: it turns 0-d scalars (eta, steps) into (1,)
            if self.engine.is_shape_inference_io(name):
                # shape tensors are read by TensorRT from host memory at enqueue time
                host = self._host_shape_inputs.get(name)
                if host is None or host.shape != a.shape or host.dtype != a.dtype:
                    host = self._host_shape_inputs[name] = np.empty_like(a)
                host[...] = a
                self.context.set_input_shape(name, a.shape)
                self.context.set_tensor_address(name, host.ctypes.data)
                key.append((name, a.shape, a.tobytes()))
                continue
            if not self.context.set_input_shape(name, a.shape):
                raise ValueError(f"{self.name}: input '{name}' shape {list(a.shape)} is outside the engine's "
                                 f"optimization profile")
            ptr = self._buffers[name].ensure(a.nbytes)
            self.context.set_tensor_address(name, ptr)
            check(rt.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            key.append((name, a.shape))
        outs = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            outs[name] = np.empty(shape, dtype=dtype)
            old_ptr = self._buffers[name].ptr
            ptr = self._buffers[name].ensure(max(outs[name].nbytes, 1))
            if ptr != old_ptr:  # a reallocation invalidates every captured graph that used the old address
                self._drop_graphs()
            self.context.set_tensor_address(name, ptr)
        self._enqueue(tuple(key))
        for name, host in outs.items():
            if host.nbytes:
                check(rt.cudaMemcpyAsync(host.ctypes.data, self._buffers[name].ptr, host.nbytes,
                                         rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        check(rt.cudaStreamSynchronize(self.stream))
        return outs

    def _enqueue(self, key: tuple) -> None:
        rt = cudart()
        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError(f"{self.name}: TensorRT enqueue failed")
            return
        # input buffer addresses also belong in the key: a grown buffer has moved
        key = key + tuple((n, self._buffers[n].ptr) for n in self._inputs if self._buffers[n].ptr)
        graph_exec = self._graphs.get(key)
        if graph_exec is None:
            # one graph per context at a time: replaying a graph captured for other shapes after the context has
            # run these is not documented as safe, so a new shape key replaces the old graph (recaptured on return)
            self._drop_graphs()
            # one plain run first: TensorRT may allocate / set up lazily, which must not happen during capture
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError(f"{self.name}: TensorRT enqueue failed")
            check(rt.cudaStreamSynchronize(self.stream))
            check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            ok = self.context.execute_async_v3(self.stream)
            err, graph = rt.cudaStreamEndCapture(self.stream)
            if not ok or int(err) != int(rt.cudaError_t.cudaSuccess):
                # some engines (e.g. loops whose trip count is read on the host) cannot be captured: run them
                # uncaptured from now on, and say so once; the result of this call is already in the buffers
                if int(err) == int(rt.cudaError_t.cudaSuccess):
                    check(rt.cudaGraphDestroy(graph))  # captured, but the enqueue inside it failed
                self.cuda_graph = False
                self.cuda_graph_error = f"enqueue ok={ok}, capture status {err}"
                warnings.warn(f"{self.name}: CUDA graph capture failed ({self.cuda_graph_error}); "
                              f"running without CUDA graphs", RuntimeWarning, stacklevel=3)
                rt.cudaGetLastError()  # clears the capture's error; it is the error we are handling, not a new one
                return
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0))
            check(rt.cudaGraphDestroy(graph))
            self._graphs[key] = graph_exec
        check(rt.cudaGraphLaunch(graph_exec, self.stream))

    def _drop_graphs(self) -> None:
        rt = cudart()
        for g in self._graphs.values():
            check(rt.cudaGraphExecDestroy(g))
        self._graphs.clear()

"""``export_all``: checkpoints -> validated ONNX graphs (+ TensorRT engines) + manifest.json in one folder.

The export is written into a new sibling folder (``.NAME.export-XXXX``) and swapped in whole when it is complete
(``publish``): an export that fails validation or is killed half-way leaves the previous export in ``--out`` as it
was (a killed one leaves its staging folder behind, a hidden sibling to delete). ``--out`` must be absent, empty or
a previous export (it holds manifest.json), since the swap replaces the whole folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
from pathlib import Path

from vaegan.train.errors import VaeganError

MIN_OPSET = 18   # torch.onnx's dynamo exporter emits opset 18 and newer
MAX_OPSET = 22   # newest opset the TensorRT 10 ONNX parser accepts
DEFAULT_OPSET = MIN_OPSET


class TensorRTUnavailable(VaeganError):
    """--trt was asked for but this machine cannot build engines; the ONNX files were written and validated."""


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise VaeganError(f"opset {opset} is out of range (supported: {MIN_OPSET}..{MAX_OPSET})")


def check_out_dir(out_dir: Path) -> None:
    """Before any slow work: ``out_dir``'s parent exists (created) and takes new files, and ``out_dir`` is absent,
    an empty folder or a previous export (the swap replaces it whole, so nothing else may live there)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VaeganError(f"{out_dir}: output folder is not writable ({e.strerror or type(e).__name__})") from None
    from .manifest import MANIFEST

    if out_dir.exists() and not out_dir.is_dir():
        raise VaeganError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise VaeganError(f"{out_dir}: not empty and not an artifacts folder (no {MANIFEST}); the export replaces "
                          f"the whole folder, so give a new or empty one")


def stage_dir(out_dir: Path) -> Path:
    """A new empty sibling of ``out_dir`` to export into, with the mode a plain ``mkdir`` would give it (``mkdtemp``
    gives 0700); a previous export's TensorRT timing cache is carried over."""
    from .trt import TIMING_CACHE

    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(stage, 0o777 & ~mask)
    if (out_dir / TIMING_CACHE).is_file():
        shutil.copy2(out_dir / TIMING_CACHE, stage / TIMING_CACHE)
    return stage


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(stage: Path, out_dir: Path) -> None:
    """Swap the finished export ``stage`` in as ``out_dir`` and delete the previous one. With an existing
    ``out_dir`` the two are exchanged in one atomic rename where the OS has one (Linux); elsewhere the previous
    export is first renamed aside (``.NAME.old-XXXX``, whole if the process dies before the second rename)."""
    if not out_dir.exists():
        os.rename(stage, out_dir)
        return
    if _exchange(stage, out_dir):
        shutil.rmtree(stage)  # now the previous export
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old)
    os.rename(stage, out_dir)
    shutil.rmtree(old)


def _images(n: int, contract=None, data: dict | None = None):
    """Validation images of the contract: the test images of ``data`` (``vaegan.train.data`` keyword arguments;
    default Fashion-MNIST for its contract) when they can be read and fit, else uniform noise in [0, 1] (noted)."""
    import torch

    from vaegan.runtime.contract import FASHION_MNIST

    contract = contract or FASHION_MNIST
    data = data or ({"dataset": "fashion-mnist"} if contract == FASHION_MNIST else None)
    if data is not None:
        try:
            from vaegan.train.data import test_subset

            x = test_subset(n, **data)[0]
            if tuple(x.shape[1:]) == contract.shape:
                return x, f"{data.get('dataset', 'fashion-mnist')} test images"
        except VaeganError:
            pass
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *contract.shape, generator=g), "uniform random images (no test images of the contract given)"


def load_nets(vaegan_ckpt, classifier_ckpt):
    """(Nets, ONNX classifier ModelProto or None): the purifier and the classifier checked to agree on the image
    contract; the classifier may be a checkpoint, a ``.pt2`` program or an ONNX file (``.onnx``, its graph taken
    as it is and checked against the contract)."""
    from vaegan.train.checkpoint import check_pair, load_model

    from . import specs
    from .grad import fold_batchnorm

    vg, _ = load_model(Path(vaegan_ckpt), "vaegan")
    if Path(classifier_ckpt).suffix == ".onnx":
        model = load_onnx_classifier(Path(classifier_ckpt), vg.contract)
        return specs.Nets(vg, None, fold_batchnorm(vg), None), model
    clf, _ = load_model(Path(classifier_ckpt), "classifier")
    check_pair(vg, clf, vaegan_ckpt, classifier_ckpt)
    return specs.Nets(vg, clf, fold_batchnorm(vg), fold_batchnorm(clf)), None


def load_onnx_classifier(path: Path, contract):
    """The user's ONNX classifier, checked against the purifier's contract: one float input N x C x H x W (N
    symbolic), one float output N x K with K the contract's class count. Its input and output are renamed to the
    manifest's ``x`` / ``logits`` and their batch axis to ``N``; the graph is otherwise kept as it is."""
    import onnx

    if not path.is_file():
        raise VaeganError(f"{path}: ONNX classifier not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError / ValueError / OSError on a bad file
        raise VaeganError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    init = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in init]
    outs = list(model.graph.output)

    def dims(vi):
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in vi.type.tensor_type.shape.dim]

    if len(ins) != 1 or len(outs) != 1:
        raise VaeganError(f"{path}: the ONNX classifier has {len(ins)} inputs and {len(outs)} outputs (expected one "
                          f"image input and one logits output)")
    di, do = dims(ins[0]), dims(outs[0])
    want = list(contract.shape)
    if len(di) != 4 or [int(d) if isinstance(d, int) else d for d in di[1:]] != want:
        raise VaeganError(f"{path}: input shape {di} does not take the purifier's images N x {' x '.join(map(str, want))}")
    if isinstance(di[0], int):
        raise VaeganError(f"{path}: input batch dimension is fixed at {di[0]}; export it with a dynamic batch axis")
    if len(do) != 2 or do[1] != contract.num_classes:
        raise VaeganError(f"{path}: output shape {do}, the purifier's contract has {contract.num_classes} classes "
                          f"(expected N x {contract.num_classes})")
    for what, vi in (("input", ins[0]), ("output", outs[0])):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise VaeganError(f"{path}: {what} {vi.name!r} is "
                              f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()} (expected "
                              f"float32: images in [0, 1], logits)")
    from onnx import compose

    from .validate import _all_nodes

    if (ins[0].name, outs[0].name) != ("x", "logits"):
        # every name prefixed, so that "x" / "logits" name nothing else in the graph; then the one input and output
        model = compose.add_prefix(model, "user/")
        rename = {"user/" + ins[0].name: "x", "user/" + outs[0].name: "logits"}
        for n in _all_nodes(model.graph):
            n.input[:] = [rename.get(i, i) for i in n.input]
            n.output[:] = [rename.get(o, o) for o in n.output]
        for vi in list(model.graph.input) + list(model.graph.output):
            vi.name = rename.get(vi.name, vi.name)
    for vi in (next(i for i in model.graph.input if i.name == "x"), model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"  # the manifest's batch symbol (docs/ARTIFACTS.md)
    return model


def export_graphs(nets, cfg, opset: int, images, gen, names=None, stride1_as_conv: bool = True,
                  echo=None) -> dict:
    """ONNX models of the graphs and pieces of docs/ARTIFACTS.md (``names``: only these, and ``purify`` when its
    pieces are among them), not yet validated. ``stride1_as_conv=False`` keeps the exporter's stride-1 ConvTranspose
    nodes (the input-gradients of stride-1 Convs) instead of rewriting them as Conv (``rewrite.py``): the shipped
    export always rewrites; ``bench/levers.py`` times the difference."""
    from . import fused, rewrite, specs
    from .grad import TRACE_BATCH, to_onnx

    L = nets.latent
    specs_all = list(specs.graph_specs(L, nets.contract).values()) + list(specs.piece_specs(L, nets.contract).values())
    models = {}
    for spec in specs_all:
        if spec.build is None or (names is not None and spec.name not in names):
            continue
        if spec.name == "classifier" and nets.clf is None:  # the user's ONNX classifier: taken as it is
            continue
        t0 = time.perf_counter()
        ex = specs.dummy_inputs(spec, TRACE_BATCH, L, images, gen, cfg)
        m = to_onnx(spec.build(nets), [ex[i.name] for i in spec.inputs], [i.name for i in spec.inputs],
                    [o.name for o in spec.outputs], spec.dynamic_axes, opset)
        # stride-1 ConvTranspose (input-gradient of a stride-1 Conv) -> Conv: see rewrite.py
        models[spec.name] = rewrite.convtranspose_as_conv(m, max_stride=1) if stride1_as_conv else m
        if echo:
            echo(f"exported {spec.name} ({time.perf_counter() - t0:.1f} s)")
    if {"encoder", "purify_step", "purify_loss"} <= set(models):
        models["purify"] = fused.assemble_purify(models["encoder"], models["purify_step"], models["purify_loss"], L,
                                                 nets.contract.shape)
    return models


def purify_graph(vaegan_ckpt, classifier_ckpt, *, opset: int = DEFAULT_OPSET, purify_cfg=None, stride1_as_conv: bool = True):
    """The fused ``purify`` ModelProto of a checkpoint, exported as ``export_all`` does but not validated nor
    written (``bench/levers.py`` builds its variants from it)."""
    import torch

    from vaegan.train.checkpoint import load_raw, purify_config

    from .grad import TRACE_BATCH

    check_opset(opset)
    nets, _ = load_nets(vaegan_ckpt, classifier_ckpt)
    images, _ = _images(TRACE_BATCH, nets.contract)
    models = export_graphs(nets, purify_cfg or purify_config(load_raw(vaegan_ckpt)), opset, images, torch.Generator().manual_seed(0),
                           names={"encoder", "purify_step", "purify_loss"}, stride1_as_conv=stride1_as_conv)
    return models["purify"]


def export_all(vaegan_ckpt, classifier_ckpt, out_dir, *, opset: int = DEFAULT_OPSET, max_batch: int = 64, trt: bool = False,
               fp16: bool = False, purify_cfg=None, max_restarts: int = 8, echo=print,
               data: dict | None = None) -> dict:
    """Export, validate and describe every graph of docs/ARTIFACTS.md; returns the manifest (also written).

    The image contract is the purifier checkpoint's (the classifier must agree: a checkpoint, a ``.pt2`` program,
    or an ``.onnx`` file that is copied as ``classifier.onnx`` after its input / output shapes are checked; it has
    no torch reference, so its numerics are not validated). ``purify_cfg`` defaults to the checkpoint's operating
    point; ``data`` (``vaegan.train.data`` keyword arguments) names test images to validate on.

    Raises ``VaeganError`` for bad input (before any slow work), ``ExportValidationError`` (a VaeganError) listing
    every failed check, and ``TensorRTUnavailable`` when ``trt=True`` on a machine without TensorRT / an NVIDIA
    GPU (after the ONNX files and manifest are written). Everything is written to a staging folder that replaces
    ``out_dir`` whole when the export succeeds (or fails for want of TensorRT only, its ONNX part complete); on any
    other failure it is deleted and ``out_dir`` is left as it was (module docstring)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    stage = stage_dir(out_dir)
    try:
        man = _export_into(stage, out_dir, vaegan_ckpt, classifier_ckpt, opset=opset, max_batch=max_batch, trt=trt,
                           fp16=fp16, purify_cfg=purify_cfg, max_restarts=max_restarts, echo=echo, data=data)
    except TensorRTUnavailable:
        publish(stage, out_dir)
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish(stage, out_dir)
    echo(f"wrote {out_dir / 'manifest.json'}")
    return man


def _export_into(out_dir: Path, final_dir: Path, vaegan_ckpt, classifier_ckpt, *, opset: int, max_batch: int,
                 trt: bool, fp16: bool, purify_cfg, max_restarts: int, echo, data: dict | None = None) -> dict:
    """``export_all``'s work, writing into the staging folder ``out_dir`` (``final_dir``: where it will be, for
    messages)."""
    import onnx
    import torch

    from vaegan.runtime.names import unsupported_purifier
    from vaegan.train.checkpoint import load_raw, purify_config
    from vaegan.util import file_sha256
    from vaegan.train.purifier import check_config

    from . import manifest, specs, validate
    from .grad import TRACE_BATCH

    t_start = time.perf_counter()
    check_opset(opset)
    if max_batch < 1:
        raise VaeganError(f"max-batch must be >= 1 (got {max_batch})")
    cfg = purify_cfg or purify_config(load_raw(vaegan_ckpt))
    try:
        check_config(cfg)
    except ValueError as e:
        raise VaeganError(str(e)) from None
    why = unsupported_purifier(cfg.mode, cfg.init)
    if why:
        raise VaeganError(why)
    if trt:
        from .trt import check_fp16, check_profile

        check_profile(max_restarts, cfg)
        if fp16:
            check_fp16()
    vaegan_ckpt, classifier_ckpt = Path(vaegan_ckpt), Path(classifier_ckpt)
    nets, onnx_classifier = load_nets(vaegan_ckpt, classifier_ckpt)
    L = nets.latent
    gspecs = specs.graph_specs(L, nets.contract)

    # ---- export (torch route for every piece)
    gen = torch.Generator().manual_seed(0)
    images, image_source = _images(max(max_batch, TRACE_BATCH), nets.contract, data)
    models = export_graphs(nets, cfg, opset, images, gen, echo=echo)
    if onnx_classifier is not None:
        models["classifier"] = onnx_classifier

    # ---- write + validate
    report = validate.Report()
    graphs: dict = {}
    echo(f"validating against PyTorch on {image_source}, batch 1 and {max_batch}:")
    for name, spec in gspecs.items():
        model = models[name]
        model.producer_name = "vaegan-export"
        path = out_dir / spec.file
        onnx.save(model, path)
        feeds = {b: specs.dummy_inputs(spec, b, L, images, gen, cfg) for b in sorted({1, max_batch})}
        if name == "classifier" and onnx_classifier is not None:
            report.failures += validate.check_user_classifier(path, feeds, nets.contract.num_classes, echo)
            entry = spec.manifest_entry()
            graphs[name] = {"file": entry.pop("file"), "sha256": file_sha256(path), **entry,
                            "bytes": path.stat().st_size, "source": "user ONNX classifier (no torch reference)"}
            continue
        problems = validate.structural_problems(model, spec)
        for p in problems:
            echo(f"  [x] {p}")
        report.failures += problems
        validate.check_numerics(spec, path, nets, feeds, report, echo)
        if spec.kind == "fused":  # the runtime's CPU fast path at the shipped T (one restart)
            feeds = {b: specs.dummy_inputs(spec, b, L, images, gen, cfg, restarts=1) for b in sorted({1, max_batch})}
            validate.check_fast_path(spec, path, nets, feeds, report, echo)
        entry = spec.manifest_entry()
        entry = {"file": entry.pop("file"), "sha256": file_sha256(path), **entry}
        entry["bytes"] = path.stat().st_size
        graphs[name] = entry
    for name, errs in report.summary().items():
        graphs[name]["validation"] = errs
    report.raise_if_failed()
    echo(f"all {len(gspecs)} graphs validated ({len(report.checks)} output checks)")

    def _make_manifest(engines: dict) -> dict:
        m = manifest.build(opset=opset, latent_dim=L, max_batch=max_batch,
                           checkpoint=(vaegan_ckpt.name, file_sha256(vaegan_ckpt)),
                           classifier_checkpoint=(classifier_ckpt.name, file_sha256(classifier_ckpt)),
                           graphs=graphs, engines=engines, purify_cfg=cfg, contract=nets.contract)
        manifest.write(out_dir, m)
        return m

    man = _make_manifest({})
    if trt:
        from . import trt as trt_mod

        missing = trt_mod.missing_requirements()
        if missing:
            raise TensorRTUnavailable(
                f"TensorRT engines not built: {missing}. The ONNX files and manifest.json in {final_dir} are written "
                "and validated; export with --trt again where TensorRT runs.")
        engines = trt_mod.build_engines(out_dir, gspecs, max_batch=max_batch, max_restarts=max_restarts,
                                        fp16=fp16, images=images, purify_cfg=cfg, echo=echo)
        man = _make_manifest(engines)
    echo(f"export took {time.perf_counter() - t_start:.1f} s")
    return man

"""Loading and verifying the exported artifacts (the contract: docs/ARTIFACTS.md).

``load_artifacts(dir)`` reads ``manifest.json``, refuses an unknown ``format_version``, and checks every field the
runtime reads against ``SCHEMA`` (types and ranges) and the purification defaults against ``PurifyParams.check``.
``Artifacts.path(graph)`` / ``verify(graphs)`` refuse a ``file`` that resolves outside the folder (``..``, an
absolute path, a symlink to elsewhere) before touching it, then check its sha256 against the manifest before
anything loads it. Every failure is an ``ArtifactError`` whose message ends with how to (re)create the directory.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vaegan.util import file_sha256

from .errors import ArtifactError

FORMAT_VERSIONS = (1,)
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "decoder", "discriminator", "classifier", "encoder_vjp", "decoder_vjp", "discriminator_grad",
          "purify")
REQUIRED_KEYS = ("format_version", "latent_dim", "preprocess", "classes", "purify_defaults", "max_batch", "graphs")
PURIFY_KEYS = ("steps", "eta", "lam", "momentum", "restarts", "noise", "seed")


# -- the manifest's schema: one checker per field the runtime reads; each returns None (ok) or what it expected --

def _int(lo: int):
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= lo else f"an integer >= {lo}"


def _number(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return None if ok else "a finite number"


def _one_of(*allowed):
    return lambda v: None if v in allowed and type(v) in {type(a) for a in allowed} else \
        f"one of {', '.join(map(repr, allowed))}"


def _classes(v):
    ok = isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) and c for c in v)
    return None if ok else "a list of at least 2 non-empty strings"


def _range(v):
    ok = isinstance(v, list) and len(v) == 2 and all(_number(x) is None for x in v) and v[0] < v[1]
    return None if ok else "[low, high], two finite numbers, low < high"


def _object(fields: dict, optional: bool = False):
    """A JSON object whose ``fields`` (name -> checker) are present (or, ``optional``, absent) and valid."""
    def check(v, where):
        if not isinstance(v, dict):
            return f"{where}: expected an object, got {_short(v)}"
        for k, c in fields.items():
            if k not in v:
                if optional:
                    continue
                return f"{where}: missing key {k!r}"
            err = c(v[k], f"{where}.{k}") if getattr(c, "nested", False) else c(v[k])
            if err is not None:
                return err if getattr(c, "nested", False) else f"{where}.{k}: expected {err}, got {_short(v[k])}"
        return None
    check.nested = True
    return check


def _file(v):
    ok = isinstance(v, str) and v and "\0" not in v
    return None if ok else "a file name relative to the artifacts folder"


def _sha256(v):
    return None if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) else "64 lowercase hex digits"


def _entries(profile: bool):
    """``graphs`` / ``engines``: name -> {file, sha256, ...} (engines: optional ``*_profile.max`` integers)."""
    entry = _object({"file": _file, "sha256": _sha256})
    bounds = _object({"steps_profile": _object({"max": _int(0)}), "restarts_profile": _object({"max": _int(1)})},
                     optional=True)

    def check(v, where):
        if not isinstance(v, dict):
            return f"{where}: expected an object of name -> {{file, sha256}}, got {_short(v)}"
        for name, e in v.items():
            err = entry(e, f"{where}.{name}") or (bounds(e, f"{where}.{name}") if profile else None)
            if err:
                return err
        return None
    check.nested = True
    return check


SCHEMA = _object({
    "latent_dim": _int(1),
    "max_batch": _int(1),
    "classes": _classes,
    "preprocess": _object({"channels": _one_of(1, 3), "height": _int(1), "width": _int(1), "layout": _one_of("NCHW"),
                           "dtype": _one_of("float32"), "range": _range}),
    "purify_defaults": _object({"steps": _int(0), "eta": _number, "lam": _number, "momentum": _number,
                                "restarts": _int(1), "noise": _number, "seed": _int(0)}),
    "graphs": _entries(profile=False),
})
OPTIONAL = _object({"engines": _entries(profile=True)}, optional=True)


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def check_manifest(manifest: dict, where: str) -> None:
    """``manifest`` against ``SCHEMA`` (and ``engines``, when present and not empty), then its purification
    defaults against ``PurifyParams.check`` (the one definition of their ranges); an ``ArtifactError`` naming the
    first field that fails."""
    from .errors import RuntimeUsageError
    from .purify import PurifyParams

    engines = manifest.get("engines")
    err = SCHEMA(manifest, "manifest") or (OPTIONAL(manifest, "manifest") if engines not in (None, {}) else None)
    if err is None:
        try:
            PurifyParams.from_settings(manifest["purify_defaults"])
        except RuntimeUsageError as e:
            err = f"manifest.purify_defaults: {e}"
    if err is not None:
        raise ArtifactError(f"{where}: {err}; {how_to_create(Path(where).parent)}")


def how_to_create(root) -> str:
    return f"create it with `vaegan-export --out {root}` (add --trt for TensorRT engines)"


@dataclass
class Artifacts:
    root: Path
    manifest: dict
    _verified: set = field(default_factory=set)

    # -- manifest fields -------------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent_dim"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["max_batch"])

    @property
    def preprocess(self) -> dict:
        return dict(self.manifest["preprocess"])

    @property
    def contract(self):
        """The image contract (``vaegan.runtime.contract.ImageContract``) of ``preprocess`` and ``classes``."""
        from .contract import ImageContract

        return ImageContract.from_manifest(self.manifest, str(self.root / MANIFEST))

    @property
    def purify_defaults(self) -> dict:
        return dict(self.manifest["purify_defaults"])

    def has_graph(self, name: str) -> bool:
        return name in self.manifest["graphs"]

    def has_engine(self, name: str) -> bool:
        return name in (self.manifest.get("engines") or {})

    # -- verified paths --------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Path of graph ``name``, after checking that it exists and matches its sha256."""
        return self._checked("graphs", name)

    def engine_path(self, name: str) -> Path:
        """Path of TensorRT engine ``name`` (``manifest["engines"]``), sha256 checked."""
        return self._checked("engines", name)

    def verify(self, graphs=None, engines=()) -> None:
        """Check the sha256 of ``graphs`` (default: every graph in the manifest) and ``engines``."""
        for g in (self.manifest["graphs"] if graphs is None else graphs):
            self.path(g)
        for e in engines:
            self.engine_path(e)

    def _inside(self, section: str, name: str, file) -> Path:
        """``root / file``, refused unless it is a relative name that resolves (symlinks followed) inside the folder:
        checked before the file is opened or hashed."""
        root = self.root.resolve()
        p = self.root / str(file)
        if not isinstance(file, str) or os.path.isabs(file) or root not in p.resolve().parents:
            raise ArtifactError(f"{self.root / MANIFEST}: {section}.{name} file {_short(file)} resolves outside the "
                                f"artifacts folder; refusing to read it. {how_to_create(self.root).capitalize()}")
        return p

    def _checked(self, section: str, name: str) -> Path:
        entries = self.manifest.get(section) or {}
        if name not in entries:
            extra = " (export with --trt)" if section == "engines" else ""
            raise ArtifactError(f"{self.root}: the manifest lists no {section[:-1]} '{name}'{extra}; "
                                f"{how_to_create(self.root)}")
        entry = entries[name]
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise ArtifactError(f"{self.root}/{MANIFEST}: {section}.{name} lacks 'file'/'sha256'; "
                                f"{how_to_create(self.root)}")
        p = self._inside(section, name, entry["file"])
        if (section, name) in self._verified:
            return p
        if not p.is_file():
            raise ArtifactError(f"{p}: missing (listed in {MANIFEST}); {how_to_create(self.root)}")
        digest = file_sha256(p)
        if digest != entry["sha256"]:
            raise ArtifactError(f"{p}: sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}... "
                                f"(corrupt or from another export); {how_to_create(self.root)}")
        self._verified.add((section, name))
        return p


def load_artifacts(root) -> Artifacts:
    """Read and validate ``root/manifest.json`` (format version, required keys). Files are hashed when used."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifacts directory not found; {how_to_create(root)}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST} (not an artifacts directory); {how_to_create(root)}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{mpath}: unreadable or corrupt ({e}); {how_to_create(root)}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: not a JSON object; {how_to_create(root)}")
    version = manifest.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise ArtifactError(f"{mpath}: format_version {version!r} is not one this runtime reads "
                            f"({', '.join(map(str, FORMAT_VERSIONS))}); re-export: {how_to_create(root)}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath}: missing key(s) {', '.join(missing)}; {how_to_create(root)}")
    defaults = manifest["purify_defaults"]
    missing = [k for k in PURIFY_KEYS if k not in defaults] if isinstance(defaults, dict) else []
    if missing:
        raise ArtifactError(f"{mpath}: purify_defaults lacks {', '.join(missing)}; {how_to_create(root)}")
    check_manifest(manifest, str(mpath))
    pre = manifest["preprocess"]
    if pre.get("channels") not in (1, 3) or (pre.get("layout"), pre.get("dtype")) != ("NCHW", "float32"):
        raise ArtifactError(f"{mpath}: preprocess {pre} is not a 1- or 3-channel NCHW float32 contract this runtime "
                            f"implements; {how_to_create(root)}")
    return Artifacts(root, manifest)

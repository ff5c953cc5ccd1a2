"""Loading and verifying the exported artifacts (the contract: docs/ARTIFACTS.md).

``load_artifacts(dir)`` reads ``manifest.json``, refuses an unknown ``format_version`` or missing keys, and
``Artifacts.path(graph)`` / ``verify(graphs)`` check a file's sha256 against the manifest before anything loads it.
Every failure is an ``ArtifactError`` whose message ends with how to (re)create the directory.
"""

from __future__ import annotations

import json
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
        p = self.root / entry["file"]
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
    missing = [k for k in PURIFY_KEYS if k not in manifest["purify_defaults"]]
    if missing:
        raise ArtifactError(f"{mpath}: purify_defaults lacks {', '.join(missing)}; {how_to_create(root)}")
    pre = manifest["preprocess"]
    if (pre.get("channels"), pre.get("layout"), pre.get("dtype")) != (1, "NCHW", "float32"):
        raise ArtifactError(f"{mpath}: preprocess {pre} is not the 1-channel NCHW float32 contract this runtime "
                            f"implements; {how_to_create(root)}")
    return Artifacts(root, manifest)

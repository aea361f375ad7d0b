"""Finding strategies: baseline recipes, Python files, and installed entry points.

A strategy reference on the command line is one of
* a recipe name: ``baselines/<name>.yaml`` (the six reference strategies and their presets),
* a recipe file: ``path/to/recipe.yaml`` (a submission's published parameters),
* a class in a file: ``path/to/file.py:ClassName``,
* an installed plugin: an entry point in the group ``ctbench.strategies``,
* a class name found in ``baselines/*.py``.

A recipe is the same form for a baseline and a submission::

    strategy: chord.py:Chord     # a file next to the recipe, or any reference above
    description: CHORD-phi ...   # optional; the class docstring otherwise
    params: {mu_peak: 0.1}

Everything a plugin can get wrong (a missing file or class, a wrong ``schedule``
signature, an import that raises) is reported as a :class:`UserError` naming the file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.common.yamlspec import Fields, load_yaml_mapping
from ctbench.errors import UserError
from ctbench.strategy import Strategy
from ctbench.tracks.resources import data_root

ENTRY_POINT_GROUP = "ctbench.strategies"


@dataclass(frozen=True)
class ResolvedStrategy:
    """A strategy class plus the parameters its recipe publishes."""

    name: str
    cls: type[Strategy]
    params: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    description: str = ""
    files: tuple[Path, ...] = ()

    def instantiate(self, overrides: dict[str, Any] | None = None) -> Strategy:
        """The strategy with recipe params, then command-line overrides, applied."""
        try:
            return self.cls(**{**self.params, **(overrides or {})})
        except UserError as exc:
            if self.origin and self.origin not in str(exc):
                # Name the recipe or plugin file, so the user knows which file to open.
                where = f"{self.origin}: {exc.where}" if exc.where else self.origin
                raise UserError(exc.message, where=where) from exc
            raise
        except Exception as exc:  # a plugin's __init__ may fail in any way
            raise UserError(
                f"constructing the strategy failed: {type(exc).__name__}: {exc}",
                where=self.origin,
            ) from exc

    def source_hash(self) -> str:
        """Hash of the strategy's class file and recipe: what a leaderboard entry pins."""
        return files_hash(self.files)


def files_hash(files: tuple[Path, ...] | list[Path]) -> str:
    """SHA-256 (16 hex digits) over each file's name and bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def baselines_dir() -> Path:
    return data_root() / "baselines"


# --------------------------------------------------------------------------- modules
def _load_module(path: Path):
    module_name = (
        f"ctbench_strategy_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    )
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError("not a loadable Python file", where=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin may fail in any way; the user needs to know where
        del sys.modules[module_name]
        raise UserError(
            f"importing the strategy failed: {type(exc).__name__}: {exc}", where=str(path)
        ) from exc
    return module


def _strategy_classes(module) -> list[type[Strategy]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Strategy)
        and obj is not Strategy
        and not inspect.isabstract(obj)
        and obj.__module__ == module.__name__
    ]


def check_strategy_class(cls: Any, where: str) -> type[Strategy]:
    """Refuse what cannot work *before* a run folder exists: the error names the plugin."""
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise UserError(
            f"{getattr(cls, '__name__', cls)!r} is not a subclass of ctbench.strategy.Strategy",
            where=where,
        )
    if inspect.isabstract(cls):
        raise UserError(f"{cls.__name__} does not implement schedule(self, ctx)", where=where)
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise UserError(f"{cls.__name__} must set a class attribute name = '...'", where=where)
    if not isinstance(cls.defaults, dict):
        raise UserError(f"{cls.__name__}.defaults must be a dict of parameters", where=where)
    params = list(inspect.signature(cls.schedule).parameters)
    if len(params) != 2:
        raise UserError(
            f"{cls.__name__}.schedule must take (self, ctx), it takes ({', '.join(params)})",
            where=where,
        )
    return cls


def class_from_file(ref: str, where: str = "--strategy") -> tuple[type[Strategy], Path]:
    file_part, class_name = ref.rsplit(":", 1)
    path = Path(file_part)
    if not path.exists():
        raise UserError(f"strategy file {file_part!r} does not exist", where=where)
    module = _load_module(path)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"no class named {class_name!r} in that file", where=str(path))
    return check_strategy_class(cls, str(path)), path


def entry_point_strategies() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def class_from_entry_point(ep: importlib.metadata.EntryPoint) -> tuple[type[Strategy], Path]:
    where = f"entry point {ep.name} = {ep.value}"
    try:
        cls = ep.load()
    except Exception as exc:  # an installed plugin may fail to import in any way
        raise UserError(
            f"loading the plugin failed: {type(exc).__name__}: {exc}", where=where
        ) from exc
    cls = check_strategy_class(cls, where)
    return cls, Path(inspect.getfile(cls))


def baseline_classes() -> dict[str, tuple[type[Strategy], Path]]:
    found: dict[str, tuple[type[Strategy], Path]] = {}
    for path in sorted(baselines_dir().glob("*.py")):
        for cls in _strategy_classes(_load_module(path)):
            found[cls.name] = (check_strategy_class(cls, str(path)), path)
    return found


# --------------------------------------------------------------------------- recipes
def load_recipe(path: Path, name: str | None = None) -> ResolvedStrategy:
    fields = Fields(load_yaml_mapping(path), path=path)
    ref = fields.get("strategy", str)
    description = fields.get("description", str, "")
    params = fields.get("params", dict, {})
    fields.finish()
    local = path.parent / ref.rsplit(":", 1)[0] if ":" in ref else None
    if local is not None and local.suffix == ".py" and local.exists():
        cls, source = class_from_file(f"{local}:{ref.rsplit(':', 1)[1]}", where=str(path))
    else:
        cls, source, _ = resolve_class(ref, where=f"{path}: strategy")
    resolved = ResolvedStrategy(
        name=name or path.stem,
        cls=cls,
        params=dict(params),
        origin=str(path),
        description=description.strip() or (inspect.getdoc(cls) or ""),
        files=(source, path),
    )
    resolved.instantiate()  # a recipe whose params the class refuses is itself an error
    return resolved


def baseline_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(baselines_dir().glob("*.yaml"))}


# ------------------------------------------------------------------------- resolution
def resolve_strategy(ref: str, where: str = "--strategy") -> ResolvedStrategy:
    """Any strategy reference (see the module docstring) → class + recipe params."""
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.exists():
            raise UserError(f"recipe file {ref!r} does not exist", where=where)
        return load_recipe(path)
    recipes = baseline_recipes()
    if ref in recipes:
        return load_recipe(recipes[ref], name=ref)
    cls, path, origin = resolve_class(ref, where, also_known=recipes)
    return _from_class(cls, path, origin=origin, name=None if ":" in ref else ref)


def resolve_class(
    ref: str, where: str, also_known: dict[str, Path] | None = None
) -> tuple[type[Strategy], Path, str]:
    """A class reference: ``file.py:Class``, an entry point name, or a baseline class name."""
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        cls, path = class_from_file(ref, where)
        return cls, path, str(path)
    plugins = entry_point_strategies()
    if ref in plugins:
        cls, path = class_from_entry_point(plugins[ref])
        return cls, path, f"entry point {ref}"
    classes = baseline_classes()
    if ref in classes:
        cls, path = classes[ref]
        return cls, path, str(path)
    known = sorted({*(also_known or {}), *plugins, *classes})
    raise UserError(f"unknown strategy {ref!r}; known: {', '.join(known)}", where=where)


def _from_class(
    cls: type[Strategy], path: Path, *, origin: str, name: str | None = None
) -> ResolvedStrategy:
    return ResolvedStrategy(
        name=name or cls.name,
        cls=cls,
        origin=origin,
        description=inspect.getdoc(cls) or "",
        files=(path,),
    )


def available_strategies() -> list[ResolvedStrategy]:
    """Every strategy ``ctbench strategies`` lists: baseline recipes, then plugins."""
    listed = [load_recipe(path, name=name) for name, path in baseline_recipes().items()]
    for name, ep in sorted(entry_point_strategies().items()):
        cls, path = class_from_entry_point(ep)
        listed.append(_from_class(cls, path, origin=f"entry point {name}", name=name))
    return listed

"""The plugin kernel: one ``PluginManager("graftkit")``, typed registries and entry-point loading.

Plugins are found in the ``graftkit`` entry-point group. ``GRAFTKIT_LOAD_PLUGINS`` is an
allow-list (comma-separated entry-point names; set but empty loads none). Every hook receives a
``register(name, obj)`` callable; the host checks the type of ``obj`` and refuses duplicate names,
naming the plugin in the error. ``GRAFTKIT_TRACE_PLUGINS=1`` logs every hook call.

``obj`` may also be a reference ``"package.module:Attribute"``: the name is registered at once and
the module is imported (and the object type-checked) only when that name is asked for. A plugin
that registers its dataset this way lets ``graftkit run OTHER`` fail, or ``graftkit plugins``
list, without importing torch or the dataset's code.

Each entry-point plugin's distribution and the folder its module was imported from are kept for
``graftkit plugins``. When two installed distributions declare the same entry-point name, the
first one found on ``sys.path`` is loaded and the other is named in a warning (logged at load
time, and listed by ``graftkit plugins``), never dropped silently.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from graftkit import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graftkit"
HOOKS = (
    "register_encoders",
    "register_compressors",
    "register_label_extractors",
    "register_datasets",
    "register_profiles",
    "register_callbacks",
)


class PluginError(ValueError):
    """A plugin registered something invalid; the message names the plugin."""


class UnknownNameError(KeyError):
    """A name asked for (dataset, encoder, extractor, profile, compressor) is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        listing = ", ".join(sorted(known)) or "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; registered {kind}s: {listing}")

    def __str__(self) -> str:
        return self.args[0]


DEFAULT_PLUGINS = ("graftkit.builtin",)

pm = pluggy.PluginManager("graftkit")
pm.add_hookspecs(hookspecs)
_loaded = False


def _allow_list() -> set[str] | None:
    raw = os.environ.get("GRAFTKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins() -> None:
    """Load entry-point plugins once (idempotent), honouring ``GRAFTKIT_LOAD_PLUGINS``.

    A second distribution declaring an entry-point name already loaded is not loaded; it is
    recorded in :func:`collisions` and named in a logged warning."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    allowed = _allow_list()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.name in _sources:
            if _distribution(ep) != _sources[ep.name]["distribution"]:
                _shadowed.setdefault(ep.name, []).append(
                    {
                        "distribution": _distribution(ep),
                        "version": _dist_version(ep),
                        "value": ep.value,
                    }
                )
            continue
        if pm.get_plugin(ep.name) is not None:  # registered by hand (tests, a host program)
            continue
        module = ep.load()
        pm.register(module, name=ep.name)
        _versions[ep.name] = _dist_version(ep)
        _sources[ep.name] = {"distribution": _distribution(ep), "location": _location(module)}
    for name in _shadowed:
        log.warning(collision_message(name))
    check_pending()
    if os.environ.get("GRAFTKIT_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()


_versions: dict[str, str] = {}
#: entry-point name -> the distribution that declared it and the folder its module came from
_sources: dict[str, dict[str, str]] = {}
#: entry-point name -> the other distributions that declare it too (not loaded)
_shadowed: dict[str, list[dict[str, str]]] = {}


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "unknown"


def _location(module: Any) -> str:
    """The folder a plugin's module was imported from (a package's folder, a module's file)."""
    file = getattr(module, "__file__", None)
    if file is None:
        return "unknown"
    path = os.path.abspath(file)
    return os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path


def collisions() -> dict[str, list[dict[str, str]]]:
    """Entry-point names declared by more than one installed distribution: name -> the
    distributions that were *not* loaded (``distribution``, ``version``, ``value``)."""
    load_plugins()
    return {name: list(others) for name, others in _shadowed.items()}


def collision_message(name: str) -> str:
    """One line naming the distribution loaded for plugin ``name`` and those left out."""
    loaded = _sources[name]
    others = ", ".join(
        f"{o['distribution']} {o['version']} ({ENTRY_POINT_GROUP} entry point {name} = {o['value']})"
        for o in _shadowed[name]
    )
    return (
        f"warning: plugin name {name!r} is declared by more than one installed distribution: "
        f"loaded {loaded['distribution']} {_versions[name]} from {loaded['location']}; not "
        f"loaded: {others}. Uninstall one (pip uninstall NAME) or rename its entry point"
    )


def check_pending() -> None:
    """Refuse implementations whose hook name matches no spec (e.g. a misspelling)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(f"plugin {pm.get_name(err.plugin)!r}: {err}") from err


#: ``"package.module:Attribute"``: a registration resolved on first use.
REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _resolve(reference: str) -> Any:
    module, _, attr = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Registry:
    """Name -> object for one hook, filled by calling that hook on every plugin."""

    kind: str
    hook: str
    check: Callable[[Any], bool]
    expected: str
    items: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def collect(self) -> Registry:
        self.items.clear()
        self.owners.clear()
        hook = getattr(pm.hook, self.hook)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name

            def register(name: str, obj: Any, _plugin: str = plugin_name) -> None:
                self.add(name, obj, _plugin)

            impl.function(register=register)
        return self

    def add(self, name: str, obj: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r}: {self.kind} name must be a non-empty string")
        if name in self.items:
            raise PluginError(
                f"plugin {plugin!r}: {self.kind} {name!r} is already registered by plugin "
                f"{self.owners[name]!r}"
            )
        if not (isinstance(obj, str) and REFERENCE.match(obj)):
            self._check(name, obj, plugin)
        self.items[name] = obj
        self.owners[name] = plugin

    def _check(self, name: str, obj: Any, plugin: str) -> None:
        if not self.check(obj):
            raise PluginError(
                f"plugin {plugin!r}: {self.kind} {name!r} must be {self.expected}, "
                f"got {type(obj).__name__}"
            )

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a ``"module:Attribute"`` reference is imported and
        checked here, once."""
        if name not in self.items:
            raise UnknownNameError(self.kind, name, list(self.items))
        obj = self.items[name]
        if isinstance(obj, str) and REFERENCE.match(obj):
            plugin = self.owners[name]
            try:
                obj = _resolve(obj)
            except (ImportError, AttributeError) as err:
                raise PluginError(
                    f"plugin {plugin!r}: {self.kind} {name!r} refers to {self.items[name]!r}, "
                    f"which cannot be loaded ({type(err).__name__}: {err})"
                ) from err
            self._check(name, obj, plugin)
            self.items[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self.items)


def _subclass_of(base: str) -> Callable[[Any], bool]:
    """A check that ``obj`` subclasses ``base`` (``"module:Class"``, imported when checking, so
    that collecting names imports no torch)."""
    return lambda obj: inspect.isclass(obj) and issubclass(obj, _resolve(base))


def _registries() -> dict[str, Registry]:
    return {
        "encoder": Registry(
            "encoder",
            "register_encoders",
            _subclass_of("graftkit.encoders:Encoder"),
            "an Encoder subclass",
        ),
        "compressor": Registry(
            "compressor",
            "register_compressors",
            callable,
            "a callable builder(dim, bridge) -> nn.Module (graftkit.compressors)",
        ),
        "extractor": Registry(
            "extractor",
            "register_label_extractors",
            _subclass_of("graftkit.labels:LabelExtractor"),
            "a LabelExtractor subclass",
        ),
        "dataset": Registry(
            "dataset",
            "register_datasets",
            _subclass_of("graftkit.data:GraftDataset"),
            "a GraftDataset subclass",
        ),
        "profile": Registry(
            "profile",
            "register_profiles",
            lambda o: isinstance(o, _resolve("graftkit.config:Profile")),
            "a graftkit.config.Profile",
        ),
        "callback": Registry(
            "callback",
            "register_callbacks",
            _subclass_of("graftkit.curriculum.callbacks:Callback"),
            "a graftkit.curriculum.callbacks.Callback subclass",
        ),
    }


def registry(kind: str) -> Registry:
    """Collect and return the registry of ``kind`` (encoder, compressor, extractor, dataset,
    profile, callback)."""
    load_plugins()
    return _registries()[kind].collect()


def get(kind: str, name: str) -> Any:
    """Look up a registered object; raises :class:`UnknownNameError` listing registered names."""
    return registry(kind).get(name)


@contextlib.contextmanager
def options_errors(kind: str, name: str) -> Iterator[None]:
    """Turn a pydantic ``ValidationError`` raised in the block by registered ``kind`` ``name``
    (its options model refused a value, e.g. a misspelt key) into a
    :class:`graftkit.config.ConfigError` naming the object, its plugin and each key, so the CLI
    prints one line instead of pydantic's dump:
    ``dataset 'digits' (plugin digits): option encoder.epoch: Extra inputs are not permitted``.
    """
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as err:
        from graftkit.config import ConfigError
        from graftkit.errors import one_line

        owner = registry(kind).owners.get(name, "unknown")
        raise ConfigError(f"{kind} {name!r} (plugin {owner}): {one_line(err)}") from None


def build(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Look up ``name`` and construct it with ``args``/``kwargs`` (a dataset, an encoder, an
    extractor), a validation error of its options as one line (:func:`options_errors`)."""
    cls = get(kind, name)
    with options_errors(kind, name):
        return cls(*args, **kwargs)


def describe() -> list[dict[str, Any]]:
    """Installed plugins with their version, distribution, the folder they were loaded from,
    hooks, registered names and the other distributions declaring the same name
    (``shadows``, not loaded) (``graftkit plugins``)."""
    load_plugins()
    regs = {r.hook: r.collect() for r in _registries().values()}
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        provides = {
            reg.kind: sorted(n for n, owner in reg.owners.items() if owner == name)
            for reg in regs.values()
        }
        source = _sources.get(name, {})
        out.append(
            {
                "name": name,
                "version": _versions.get(name, getattr(plugin, "__version__", "builtin")),
                "distribution": source.get(
                    "distribution", "graftkit (built in)" if name in DEFAULT_PLUGINS else "none"
                ),
                "location": source.get("location", _location(plugin)),
                "hooks": hooks,
                "provides": {k: v for k, v in provides.items() if v},
                "shadows": list(_shadowed.get(name, [])),
            }
        )
    return sorted(out, key=lambda d: d["name"])

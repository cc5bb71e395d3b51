"""The plugin kernel: one ``PluginManager("graftkit")``, typed registries and entry-point loading.

Plugins are found in the ``graftkit`` entry-point group. ``GRAFTKIT_LOAD_PLUGINS`` is an
allow-list (comma-separated entry-point names; set but empty loads none). Every hook receives a
``register(name, obj)`` callable; the host checks the type of ``obj`` and refuses duplicate names,
naming the plugin in the error. ``GRAFTKIT_TRACE_PLUGINS=1`` logs every hook call.

``obj`` may also be a reference ``"package.module:Attribute"``: the name is registered at once and
the module is imported (and the object type-checked) only when that name is asked for. A plugin
that registers its dataset this way lets ``graftkit run OTHER`` fail, or ``graftkit plugins``
list, without importing torch or the dataset's code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
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
    """Load entry-point plugins once (idempotent), honouring ``GRAFTKIT_LOAD_PLUGINS``."""
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
        if pm.get_plugin(ep.name) is not None:
            continue
        module = ep.load()
        pm.register(module, name=ep.name)
        dist = getattr(ep, "dist", None)
        _versions[ep.name] = dist.version if dist is not None else "unknown"
    check_pending()
    if os.environ.get("GRAFTKIT_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()


_versions: dict[str, str] = {}


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


def describe() -> list[dict[str, Any]]:
    """Installed plugins with their version, hooks and registered names (``graftkit plugins``)."""
    load_plugins()
    regs = {r.hook: r.collect() for r in _registries().values()}
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        provides = {
            reg.kind: sorted(n for n, owner in reg.owners.items() if owner == name)
            for reg in regs.values()
        }
        out.append(
            {
                "name": name,
                "version": _versions.get(name, getattr(plugin, "__version__", "builtin")),
                "hooks": hooks,
                "provides": {k: v for k, v in provides.items() if v},
            }
        )
    return sorted(out, key=lambda d: d["name"])

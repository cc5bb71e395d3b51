"""Typed run configuration (pydantic): data, model, bridge, the phases of the curriculum, eval, launch.

Paper numbers live in ``graftkit/configs/*.yaml`` and in the field defaults below, never in code
paths. Any field can be overridden with dotted keys (``--set phases.p3.lr=1e-5``); an invalid
value is reported with the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

#: The bridge's named parameter sets, which a phase lists in ``trainable`` (the bridge re-exports
#: this tuple as ``graftkit.bridge.BRIDGE_GROUPS``).
PARAMETER_GROUPS = ("compressor", "predictor", "calibrator", "projectors", "xattn", "lora", "heads")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """An invalid config value; the message names the field, the value and what is allowed."""


class DataConfig(Strict):
    """Where samples come from. ``data_dir=None`` lets the dataset synthesise its default."""

    data_dir: Path | None = None
    embeddings_dir: Path | None = Field(
        None,
        description="slice embeddings folder; relative to data_dir; default DATA_DIR/embeddings",
    )
    cache_dir: Path | None = Field(None, description="cache for synthesised data and the prior")
    synth: dict[str, Any] = Field(
        default_factory=dict, description="dataset-specific synth options"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the dataset's own settings (e.g. the hf dataset's columns); the dataset checks them",
    )
    max_slices: int | None = Field(None, gt=0, description="uniformly subsample longer volumes")
    include_impressions: bool = False
    limit_train: int | None = Field(None, gt=0)
    limit_valid: int | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)


class PriorConfig(Strict):
    """The small Llama-architecture language prior trained when no ``--llm`` is given."""

    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, gt=0)
    intermediate_size: int = Field(256, gt=0)
    num_hidden_layers: int = Field(4, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    max_position_embeddings: int = Field(512, gt=0)
    max_length: int = Field(256, gt=8, description="training sequence length in tokens")
    steps: int = Field(200, ge=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0
    corpus: list[Literal["narrative", "canonical_findings"]] = Field(
        default_factory=lambda: ["narrative"],
        min_length=1,
        description="text kinds of the training split the prior is pretrained on, each text once",
    )


class LoraConfig(Strict):
    """peft LoRA on the LLM (paper: r=16, α=32 on q,k,v,o,gate,up,down of every layer)."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


class ModelConfig(Strict):
    llm: Path | None = Field(None, description="local causal-LM directory; None = language prior")
    prior: PriorConfig = Field(default_factory=PriorConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    architecture: str | None = Field(
        None,
        description="shipped config for `graftkit plan` without weights, e.g. llama-3.2-3b-instruct",
    )
    text_embedding_layer: float = Field(
        0.5,
        gt=0,
        le=1,
        description="depth fraction of the hidden state mean-pooled as text embedding",
    )


class CompressorSettings(BaseModel):
    """Settings of the zone compressor (docs/design.md, "Zone-constrained cross-attention"), defined
    once: :class:`graftkit.bridge.ZoneCompressorConfig` extends them with the input width and
    module-only options, compressor builders (:mod:`graftkit.compressors`) read them from the
    run's ``bridge`` section, which extends :class:`BridgeSettings`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_zones: int = Field(32, gt=0, description="K, the number of zone (visual) tokens")
    num_heads: int = Field(16, gt=0, description="heads of the zone attention and global layers")
    num_global_layers: int = Field(1, ge=0, description="TransformerEncoder layers across K tokens")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout of the compressor's layers")
    position_scale: float = Field(
        1.0,
        ge=0,
        description="β in s + β·PE(z): below 1 when a unit-size PE drowns weak, localised signals",
    )
    query_residual: bool = Field(
        True,
        description="token k = q_k + attention output (a per-zone offset); False: the output alone",
    )
    slice_norm: bool = Field(
        True,
        description="LayerNorm each slice before K/V; False keeps a finding's amplitude in the slice",
    )


class BridgeSettings(CompressorSettings):
    """Settings of the bridge :func:`graftkit.bridge.graft` builds around the compressor
    (docs/design.md, "Data flow"), defined once: :class:`graftkit.bridge.GraftConfig` extends them
    with what a graft learns from its LLM and data, the run's :class:`BridgeConfig` with run-only
    choices. The defaults are the paper's."""

    predictor_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the predictor")
    xattn_layers: list[int] | None = Field(
        None, description="decoder layers with adapters; None = paper layers mapped by depth"
    )
    paper_layers: list[int] = Field(default_factory=lambda: [7, 14, 21])
    paper_depth: int = Field(28, gt=0, description="depth of the paper's decoder (Llama-3.2-3B)")
    xattn_heads: int = Field(8, gt=0, description="heads of each cross-attention adapter")
    jepa_dim: int = Field(256, gt=0, description="width of the JEPA head's output (text space)")

    @field_validator("xattn_layers", "paper_layers")
    @classmethod
    def _non_negative(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and any(layer < 0 for layer in layers):
            raise ValueError(f"layer indices must be >= 0, got {layers}")
        return layers


class BridgeConfig(BridgeSettings):
    """The run's ``bridge`` section: the bridge's own settings (:class:`BridgeSettings`, handed
    to the components as they are) plus which compressor to build and the text-space width."""

    compressor: str = Field("zone", description="registered compressor name")
    visual_dim: int | None = Field(
        None, gt=0, description="d_v for `plan`; runs read it from the data"
    )
    whitening_components: int = Field(
        256,
        gt=0,
        description="k of the text whitening = the JEPA head's width (fewer with fewer texts)",
    )
    jepa_dim: int = Field(
        256,
        gt=0,
        description="unused by runs and plan, kept so saved configs load: see whitening_components",
    )


class ObjectiveConfig(Strict):
    """Constants of the loss terms; the defaults are the paper's (docs/design.md "Four-phase curriculum")."""

    infonce_init_temperature: float = Field(
        0.1, gt=0, description="τ0, initial value of InfoNCE's learned temperature (phase 2)"
    )
    mmd_gamma: float = Field(
        5.0, gt=0, description="γ of the IMQ kernel, α = 4γ/(2D−3) (MMD, phases 1-2)"
    )
    focal_gamma: float = Field(2.0, ge=0, description="focusing γ of the focal loss (phases 3-4)")
    pos_weight_cap: float = Field(
        10.0, gt=0, description="BCE pos_weight of class c = min(n_neg,c / n_pos,c, cap) (phase 1)"
    )


class EarlyStopping(Strict):
    """``metric``: ``loss`` (= validation total loss), any logged column, e.g. ``gen_f1``."""

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = Field(None, ge=1)


#: Phase fields of configs saved before the phase list (fixed ``p1..p4`` fields), now named callbacks: ``old field -> (callback,
#: option)``. Such configs still load; the field becomes the callback (``None``/``0``/``false``
#: removes it).
LEGACY_PHASE_FIELDS = {
    "lora_freeze_epoch": ("freeze_lora", "after_epoch"),
    "recalibrate_every": ("recalibrate", "every"),
    "projector_lr_scale": ("lars_projector_lr", None),
    "ewc_lambda": ("ewc", "lambda"),
    "monitor_collapse": ("collapse_monitor", None),
}


def _legacy_callback(field: str, value: Any) -> dict[str, Any] | None:
    """The callback options an old phase field's value stands for; ``None`` = no callback."""
    if value is None or value is False or (field == "ewc_lambda" and value == 0):
        return None
    if field == "projector_lr_scale":
        low, high = value
        return {"min": low, "max": high}
    if field == "monitor_collapse":
        return {}
    return {LEGACY_PHASE_FIELDS[field][1]: value}


class PhaseConfig(Strict):
    """One curriculum phase as declared data (docs/design.md, "Four-phase curriculum").

    ``callbacks`` names the phase's mechanics in the order they run, each with its options
    (``graftkit.curriculum.callbacks``; plugins add more through ``register_callbacks``):
    ``{freeze_lora: {after_epoch: 6}, recalibrate: {every: 1}}``. A name mapped to ``null`` is
    switched off, so ``--set phases.p3.callbacks.lars_projector_lr=null`` removes one.
    """

    name: str
    trainable: list[str]
    losses: dict[str, float]
    text: Literal["conditions", "positive_findings", "canonical_findings", "narrative"]
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant", "plateau"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    plateau_patience: int = Field(3, ge=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    grad_clip: float | None = Field(1.0, gt=0)
    callbacks: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict, description="named callbacks with their options, in running order"
    )
    finding_weight: float = Field(
        1.0,
        ge=1,
        description="LM-loss weight of the response tokens that state findings (1 = the paper's plain LM loss)",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # ``ewc_fisher`` was never read (the penalty is L2-SP, Fisher = 1): configs saved by older
        # runs still hold ``ewc_fisher: false`` and load; asking for a Fisher-weighted EWC fails.
        if "ewc_fisher" in data and data.pop("ewc_fisher"):
            raise ValueError(
                "ewc_fisher is not supported: the phase-4 penalty is L2-SP (ewc_lambda · "
                "Σ(θ − θ_P3)², Fisher = 1); remove the setting"
            )
        callbacks = dict(data.get("callbacks") or {})
        for field, (name, _) in LEGACY_PHASE_FIELDS.items():
            if field in data:
                value = _legacy_callback(field, data.pop(field))
                if value is not None or name in callbacks:
                    callbacks[name] = value
        if callbacks or "callbacks" in data:
            data["callbacks"] = callbacks
        return data

    @property
    def active_callbacks(self) -> dict[str, dict[str, Any]]:
        """The declared callbacks that are switched on, in order."""
        return {k: v for k, v in self.callbacks.items() if v is not None}

    @field_validator("trainable")
    @classmethod
    def _known_groups(cls, groups: list[str]) -> list[str]:
        unknown = [g for g in groups if g not in PARAMETER_GROUPS]
        if unknown:
            raise ValueError(
                f"unknown parameter group(s) {unknown}; allowed: {list(PARAMETER_GROUPS)}"
            )
        return groups

    @field_validator("losses")
    @classmethod
    def _positive_weights(cls, losses: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in losses.items() if v < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        return losses


#: Callbacks the fixed four phases of configs saved before the phase list ran without declaring them.
_LEGACY_IMPLICIT = {1: {"init_compressor": {}}, 3: {"warm_bridge": {}}}


class PhasesConfig(RootModel[list[PhaseConfig]]):
    """The curriculum: an ordered list of phases, numbered from 1 (``RUN/phase{N}``).

    Dotted keys address a phase by number: ``phases.p3.lr`` (or ``phases.3.lr``). A config saved
    before the phase list holds a mapping ``{p1: ..., p4: ...}`` with the mechanics as phase fields;
    it loads as the same curriculum, its fields turned into callbacks (:data:`LEGACY_PHASE_FIELDS`,
    phase 1 initialising the compressor and phase 3 taking ``--warm-bridge``, as the fixed
    four-phase engine did).
    """

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        numbers = {}
        for key in data:
            m = re.fullmatch(r"p?(\d+)", str(key))
            if m is None:
                raise ValueError(
                    f"phases: a list of phases is expected (a mapping p1..pN is read as the "
                    f"older fixed-phase form); got key {key!r}"
                )
            numbers[int(m.group(1))] = key
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise ValueError(f"phases: the mapping must number its phases 1..N, got {list(data)}")
        out = []
        for n in sorted(numbers):
            phase = dict(data[numbers[n]])
            if any(f in phase for f in LEGACY_PHASE_FIELDS) or n in _LEGACY_IMPLICIT:
                implicit = _LEGACY_IMPLICIT.get(n, {}) if len(numbers) == 4 else {}
                phase["callbacks"] = {**implicit, **dict(phase.get("callbacks") or {})}
            out.append(phase)
        return out

    @field_validator("root")
    @classmethod
    def _not_empty(cls, phases: list[PhaseConfig]) -> list[PhaseConfig]:
        if not phases:
            raise ValueError("a curriculum needs at least one phase")
        return phases

    def get(self, number: int) -> PhaseConfig:
        """Phase ``number`` (1-based, as in ``--phases`` and ``RUN/phase{N}``)."""
        if not 1 <= number <= len(self.root):
            raise ConfigError(f"phase {number}: the curriculum has phases 1-{len(self.root)}")
        return self.root[number - 1]

    @property
    def numbers(self) -> list[int]:
        return list(range(1, len(self.root) + 1))

    def __len__(self) -> int:
        return len(self.root)

    def __iter__(self):  # type: ignore[override]
        return iter(self.root)


class GenerationConfig(Strict):
    do_sample: bool = True
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.15, gt=0)
    no_repeat_ngram_size: int = Field(5, ge=0)
    max_new_tokens: int = Field(384, gt=0)
    num_beams: int = Field(1, ge=1)


class EvalConfig(Strict):
    split: str = "valid"
    extractor: str | None = Field(None, description="None = the dataset's default extractor")
    extractor_options: dict[str, Any] = Field(default_factory=dict)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0)
    ablations: bool = True
    probe_folds: int = Field(5, ge=2)
    monitor_subset: int = Field(
        32, gt=0, description="validation items the collapse monitor generates"
    )
    reliance_floor: float = Field(0.2, ge=0, le=1)


class LaunchConfig(Strict):
    """How processes are launched; rendered to an accelerate config file."""

    distributed_type: Literal["NO", "MULTI_CPU", "MULTI_GPU", "FSDP"] = "NO"
    num_processes: int = Field(1, gt=0)
    num_machines: int = Field(1, gt=0)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = 29500
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    use_cpu: bool = False
    fsdp_config: dict[str, Any] = Field(default_factory=dict)


class Profile(Strict):
    """A run preset and/or launch profile, registered through ``register_profiles``."""

    name: str
    description: str = ""
    dataset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value")
    launch: LaunchConfig | None = None


class RunConfig(Strict):
    dataset: str
    profile: str | None = None
    seed: int = 0
    output_dir: Path = Path("runs/latest")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    phases: PhasesConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    def save(self, path: Path) -> None:
        """Write the resolved config; ``graftkit run --config PATH`` repeats the run from it alone."""
        from graftkit.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False))


def default_config_path(name: str = "paper") -> Path:
    return Path(__file__).parent / "configs" / f"{name}.yaml"


def _parse_value(raw: str) -> Any:
    """A ``--set`` value: YAML scalar/list syntax (``1e-5``, ``[7,14]``, ``true``, ``null``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-5" as a string
        except ValueError:
            return value
    return value


def _list_index(node: list, part: str, key: str) -> int:
    """``p3`` or ``3`` -> index 2 of a list section (the phases); refuse anything else."""
    m = re.fullmatch(r"p?(\d+)", part)
    if m is None or not 1 <= int(m.group(1)) <= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not one of p1..p{len(node)}")
    return int(m.group(1)) - 1


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        if not isinstance(node.get(part), dict | list):
            if part in node and node[part] is not None:
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key)] = value
    else:
        node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["phases.p3.lr=1e-5", ...]`` -> ``{"phases.p3.lr": 1e-5}`` (phase 3's ``lr``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = _parse_value(raw.strip())
    return out


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``X``, ``X | None``), else ``None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_keys(
    model: type[BaseModel] = RunConfig, prefix: str = "", phase: str = "p1"
) -> list[str]:
    """Every dotted key of ``model``, sections included; the phases' as ``phases.{phase}.*``."""
    if issubclass(model, PhasesConfig):  # a list addressed by phase number: phases.p3.lr
        return config_keys(PhaseConfig, f"{prefix}{phase}.", phase)
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        sub = section_model(info.annotation)
        if sub is not None:
            keys += config_keys(sub, f"{prefix}{name}.", phase)
    return keys


def unknown_key_hint(key: str, at: int = -1) -> str:
    """``did you mean A, B, C?`` for a dotted key no config section has (its part ``at`` is the
    unknown one): the valid keys closest to it as a whole, then those of that part's section
    closest to the part; with none close, ``keys here: ...`` (the section's keys). ``--set`` and
    ``--config`` give this same hint."""
    parts = key.split(".")
    at = at % len(parts)
    phase = next((p for p in parts if re.fullmatch(r"p\d+", p)), "p1")
    keys = config_keys(phase=phase)
    parent = ".".join(parts[:at])
    here = [k for k in keys if k.rpartition(".")[0] == parent]
    names = [k.rpartition(".")[2] for k in here]
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    close = difflib.get_close_matches(parts[at], names)
    near += [k for k in here if k not in near and k.rpartition(".")[2] in close]
    return f"did you mean {', '.join(near[:3])}?" if near else f"keys here: {', '.join(here[:20])}"


def _source_of(key: str, sources: dict[str, str]) -> str | None:
    """Where ``key`` (a leaf, or a section holding leaves) was set, from ``{leaf: source}``."""
    if key in sources:
        return sources[key]
    return next((s for k, s in sources.items() if k.startswith(f"{key}.")), None)


def _format_validation_error(err: ValidationError, sources: dict[str, str] | None = None) -> str:
    """One line per error. An unknown key names where it was set (``--config FILE``, a
    profile) when ``sources`` knows, and the valid keys closest to it."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        if loc[:1] == ["phases"] and len(loc) > 1 and isinstance(loc[1], int):
            loc[1] = f"p{loc[1] + 1}"  # phases are addressed by number, as in --set
        field = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            where = _source_of(field, sources or {})
            lines.append(
                f"{where + ': ' if where else ''}unknown config key {field}; "
                + unknown_key_hint(field)
            )
            continue
        if e["type"] == "missing":
            files = sorted({s for s in (sources or {}).values() if s.startswith("--config")})
            lines.append(
                f"missing config key {field}"
                + (
                    f" ({files[0]} replaces paper.yaml, so it must be a whole run config such "
                    "as a run's config.yaml; change a few settings with --set instead)"
                    if files
                    else ""
                )
            )
            continue
        value = repr(e.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        lines.append(f"invalid config field {field} = {value}: {e['msg']}")
    return "\n".join(lines)


def build_config(
    dataset: str,
    base: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> RunConfig:
    """Merge ``base`` (a YAML tree), then dotted ``overrides``; validate with clear errors.
    ``sources`` (``{dotted.leaf: where it was set}``) lets an error name the file of a key."""
    tree = copy.deepcopy(base or yaml.safe_load(default_config_path().read_text()))
    tree.setdefault("dataset", dataset)
    tree["dataset"] = dataset
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, sources)) from None


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level")
    return tree


# ---------------------------------------------------------------------------------------------
# Provenance: where each setting of a resolved config came from (``--print-config``)

#: what a setting no layer names comes from: the field's default in this module
DEFAULT_SOURCE = "default"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a config tree as ``{dotted.key: value}``; the phases are entered by number as
    ``--set`` addresses them (``phases.p1.lr``), another list of mappings with ``[i]``, any other
    list is one value."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        stem = prefix.rstrip(".")
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{stem}.p{i + 1}." if stem == "phases" else f"{stem}[{i}]."))
        return out
    return {prefix.rstrip("."): tree}


def build_config_with_sources(
    dataset: str, base: dict[str, Any], base_source: str, layers: list[tuple[str, dict[str, Any]]]
) -> tuple[RunConfig, dict[str, str]]:
    """:func:`build_config` over named layers, later layers winning, and where each setting of
    the result came from: ``{dotted.key: source}`` for every leaf (:func:`flatten`) of the
    resolved config. ``base`` is a YAML tree; each layer maps dotted keys to values (a mapping
    value replaces that whole section). A leaf no layer names has :data:`DEFAULT_SOURCE`.
    """
    overrides: dict[str, Any] = {}
    sources = dict.fromkeys(flatten(base), base_source)
    for source, values in layers:
        for key, value in values.items():
            overrides.pop(key, None)
            overrides[key] = value
            for old in [k for k in sources if k == key or k.startswith((f"{key}.", f"{key}["))]:
                del sources[old]
            for leaf in flatten(value, f"{key}.") if isinstance(value, dict) else [key]:
                sources[leaf] = source
    cfg = build_config(dataset, base, overrides, sources)
    resolved = flatten(json.loads(cfg.model_dump_json()))
    return cfg, {key: sources.get(key, DEFAULT_SOURCE) for key in resolved}


def format_config(cfg: RunConfig, sources: dict[str, str]) -> str:
    """Every setting of ``cfg`` once, as ``key: value  # source``, in the config's own order."""
    rows = [
        (key, json.dumps(value, default=str), sources.get(key, DEFAULT_SOURCE))
        for key, value in flatten(json.loads(cfg.model_dump_json())).items()
    ]
    width = min(max(len(k) + len(v) for k, v, _ in rows) + 2, 64)
    return "\n".join(f"{f'{k}: {v}':<{width}}  # {s}" for k, v, s in rows)

"""Typed run configuration (pydantic): data, model, bridge, the phases of the curriculum, eval, launch.

Paper numbers live in ``graftkit/configs/*.yaml`` and in the field defaults below, never in code
paths. Any field can be overridden with dotted keys (``--set phases.p3.lr=1e-5``); an invalid
value is reported with the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationInfo,
    field_validator,
)

#: The bridge's named parameter sets, which a phase lists in ``trainable`` (the bridge re-exports
#: this tuple as ``graftkit.bridge.BRIDGE_GROUPS``).
PARAMETER_GROUPS = ("compressor", "predictor", "calibrator", "projectors", "xattn", "lora", "heads")


def _finite_tree(value: Any, where: str = "") -> Any:
    """``value`` unchanged when every number in it (nested mappings and lists included) is
    finite; a ``ValueError`` naming the first that is not. The typed float fields refuse NaN and
    Inf themselves (``allow_inf_nan=False``); this covers the free-form options."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("every number must be finite" + (f" (at {where})" if where else ""))
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_tree(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _finite_tree(item, f"{where}[{i}]")
    return value


#: An option value of a free-form mapping (a plugin's, a callback's): any value whose numbers
#: are finite, so the error names the option (``phases.p3.callbacks.ewc.lam``).
Finite = Annotated[Any, AfterValidator(_finite_tree)]
Options = dict[str, Finite]


class Strict(BaseModel):
    """Base of every config section: unknown keys are refused, and so is a NaN or infinite
    number anywhere (no learning rate, weight, temperature or probability can train from one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    synth: Options = Field(default_factory=dict, description="dataset-specific synth options")
    max_slices: int | None = Field(None, gt=0, description="uniformly subsample longer volumes")
    include_impressions: bool = False
    limit_train: int | None = Field(None, gt=0)
    limit_valid: int | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    options: Options = Field(
        default_factory=dict,
        description="the dataset's own settings (e.g. the hf dataset's columns); the dataset checks them",
    )


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


class LoraSettings(Strict):
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


class ChatConfig(Strict):
    """How every prompt of a run is rendered through the LLM's chat template (saved with the run,
    so evaluation and generation repeat what training saw)."""

    system: str | None = Field(None, description="a system turn before every user turn")
    date_string: str = Field(
        "26 Jul 2024",
        min_length=1,
        description="the date a date-stamping template (Llama-3.x) writes: fixed, so a prompt is "
        "the same on every day (26 Jul 2024 is those templates' own clockless default)",
    )


class ModelConfig(Strict):
    llm: Path | None = Field(None, description="local causal-LM directory; None = language prior")
    prior: PriorConfig = Field(default_factory=PriorConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    chat: ChatConfig = Field(default_factory=ChatConfig)
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

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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


class EarlyStoppingConfig(Strict):
    """``metric``: ``loss`` (= validation total loss), any logged column, e.g. ``gen_f1``."""

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = Field(None, ge=1)


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
    text: Literal[
        "conditions", "positive_findings", "canonical_findings", "narrative", "summarised_narrative"
    ]
    epochs: int = Field(gt=0)
    steps: int | None = Field(
        None,
        gt=0,
        description="training budget in optimizer steps: the phase runs ceil(steps / steps per "
        "epoch) epochs instead of `epochs`, so a smaller cohort trains as long as a larger one",
    )
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant", "plateau"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    plateau_patience: int = Field(3, ge=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    grad_clip: float | None = Field(1.0, gt=0)
    callbacks: dict[str, dict[str, Finite] | None] = Field(
        default_factory=dict, description="named callbacks with their options, in running order"
    )
    finding_weight: float = Field(
        1.0,
        ge=1,
        description=(
            "LM-loss weight of the response tokens that state findings: a findings text but its "
            "end-of-turn token, the opening summary of a summarised_narrative "
            "(1 = the paper's plain LM loss)"
        ),
    )

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

    @field_validator("weight_decay")
    @classmethod
    def _decay_below_one(cls, weight_decay: float, info: ValidationInfo) -> float:
        """Decoupled decay (AdamW, Loshchilov & Hutter 2019, Algorithm 2) scales every weight
        by ``1 - lr·weight_decay`` per step, and SGD's L2 term does the same: at 1 or more the
        weights are zeroed or flipped each step."""
        lr = info.data.get("lr")
        if lr is not None and lr * weight_decay >= 1:
            raise ValueError(
                f"lr {lr:g} x weight_decay {weight_decay:g} >= 1: each step would scale every "
                "weight by 1 - lr*weight_decay <= 0"
            )
        return weight_decay


class PhasesConfig(RootModel[list[PhaseConfig]]):
    """The curriculum: an ordered list of phases, numbered from 1 (``RUN/phase{N}``).

    Dotted keys address a phase by number: ``phases.p3.lr`` (or ``phases.3.lr``). The older
    fixed-phase mapping ``{p1: ..., p4: ...}`` is read by :func:`graftkit.config.upgrade`.
    """

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
    extractor_options: Options = Field(default_factory=dict)
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
    fsdp_config: Options = Field(default_factory=dict)


class Profile(Strict):
    """A run preset and/or launch profile, registered through ``register_profiles``."""

    name: str
    description: str = ""
    dataset: str | None = None
    overrides: Options = Field(default_factory=dict, description="dotted key -> value")
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
    """A shipped config file (``graftkit/configs/NAME.yaml``)."""
    return Path(__file__).parents[1] / "configs" / f"{name}.yaml"

"""``graftkit export RUN --output DIR``: a finished run as a Hub-ready folder, laid out like the
authors' release of Ker-VLJEPA-3B (the graft's weights in safetensors and peft format, a model
card) and loadable back with :meth:`graftkit.bridge.GraftedLM.from_pretrained`.

::

    DIR/
      README.md                 the model card: YAML metadata (base model, licence, datasets,
                                metrics from metrics.json) and the commands that reproduce it
      graft_config.json, bridge.safetensors, adapter_config.json, adapter_model.safetensors
                                the graft (GraftedLM.save_pretrained): the bridge, the added
                                vocabulary rows, LoRA in peft's adapter format
      tokenizer/                the tokenizer, its chat template pinned to the run's date
      chat.json                 the run's prompt, ``ChatPrompt(**json)``: instruction, system, date
      generation_config.json    the run's evaluation decoding settings
      config.yaml, metrics.json the run's own (what was trained, what it scored)
      base/                     only for a run on the embedded language prior: the prior itself,
                                so the folder loads with nothing else

The folder is written beside ``DIR`` and renamed into place when complete
(:func:`graftkit.io.atomic_dir`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from graftkit.io import atomic_dir
from graftkit.rundir import RunDir

CHAT_FILE = "chat.json"
BASE_DIR = "base"


def pin_date(template: str, date_string: str) -> str:
    """``template`` with ``date_string`` defined unless the caller passes one: a date-stamping
    (Llama-3.x) template then renders the same prompt on every day, in any program."""
    return f"{{%- if date_string is not defined %}}{{%- set date_string = {json.dumps(date_string)} %}}{{%- endif %}}{template}"


def export_run(run, output: Path, *, license: str | None = None) -> Path:
    """Write the export of ``run`` (its model as loaded, e.g. by
    :func:`graftkit.curriculum.engine.open_run`) to ``output``; returns ``output``."""
    output = Path(output)
    rundir: RunDir = run.rundir
    metrics = rundir.read_metrics()
    info = card_info(run, license)
    tokenizer = copy.deepcopy(run.tokenizer)
    template = tokenizer.chat_template
    if isinstance(template, str) and "date_string" in template:
        tokenizer.chat_template = pin_date(template, run.cfg.model.chat.date_string)
    glm_tokenizer, run.glm.tokenizer = run.glm.tokenizer, tokenizer
    try:
        with atomic_dir(output) as tmp:
            run.glm.save_pretrained(tmp)
            prompt = run.prompt
            chat = {
                "text": prompt.text,
                "system": prompt.system,
                "date_string": prompt.date_string,
            }
            (tmp / CHAT_FILE).write_text(json.dumps(chat, indent=2))
            (tmp / "generation_config.json").write_text(
                json.dumps(generation_config(run), indent=2)
            )
            shutil.copy2(rundir.config, tmp / "config.yaml")
            if rundir.metrics.is_file():
                shutil.copy2(rundir.metrics, tmp / "metrics.json")
            if run.cfg.model.llm is None:
                shutil.copytree(run.llm_path, tmp / BASE_DIR)
            (tmp / "README.md").write_text(model_card(run, metrics, info))
    finally:
        run.glm.tokenizer = glm_tokenizer
    return output


def generation_config(run) -> dict[str, Any]:
    """The run's evaluation decoding settings as transformers' ``GenerationConfig`` fields."""
    gen = run.cfg.eval.generation
    out: dict[str, Any] = {
        "do_sample": gen.do_sample,
        "max_new_tokens": gen.max_new_tokens,
        "repetition_penalty": gen.repetition_penalty,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        "num_beams": gen.num_beams,
        "pad_token_id": run.tokenizer.pad_token_id,
        "eos_token_id": run.tokenizer.eos_token_id,
    }
    if gen.do_sample:
        out.update(temperature=gen.temperature, top_p=gen.top_p)
    return out


def card_info(run, license: str | None = None) -> dict[str, Any]:
    """What the card's metadata says: the base model, the licence, the datasets and tags (the
    dataset plugin's :meth:`~graftkit.data.GraftDataset.card_info`, then ``license``)."""
    info = {"license": "other", "datasets": [], "tags": []}
    info.update(run.dataset.card_info())
    if license:
        info["license"] = license
    if run.cfg.model.llm is None:
        info["base_model"] = None  # the embedded language prior ships in base/
    else:
        config = json.loads((Path(run.llm_path) / "config.json").read_text())
        info["base_model"] = config.get("_name_or_path") or Path(run.llm_path).name
    return info


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def model_card(run, metrics: dict[str, Any], info: dict[str, Any]) -> str:
    """``README.md``: YAML metadata (the Hub's model-card fields) and the card's text."""
    cfg = run.cfg
    e = metrics.get("eval", {})
    results = {
        "macro_f1": e.get("macro_f1"),
        "macro_precision": e.get("macro_precision"),
        "macro_recall": e.get("macro_recall"),
        **{k: e.get(k) for k in ("micro_f1", "weighted_f1", "crg") if k in e},
    }
    meta: dict[str, Any] = {
        "library_name": "graftkit",
        "license": info["license"],
        "tags": ["graftkit", "report-generation", *info["tags"]],
    }
    if info.get("base_model"):
        meta["base_model"] = info["base_model"]
    if info["datasets"]:
        meta["datasets"] = list(info["datasets"])
    if e:
        meta["model-index"] = [
            {
                "name": f"graftkit-{cfg.dataset}-{cfg.profile or 'run'}",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "report generation"},
                        "dataset": {
                            "name": f"{cfg.dataset} {e.get('split', 'valid')}",
                            "type": (info["datasets"] or [cfg.dataset])[0],
                        },
                        "metrics": [
                            {"type": key, "name": key.replace("_", " "), "value": round(value, 4)}
                            for key, value in results.items()
                            if isinstance(value, int | float)
                        ],
                    }
                ],
            }
        ]
    inventory = run.glm.inventory()
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# graftkit graft: {cfg.dataset}, profile {cfg.profile or 'none'}",
        "",
        "A frozen encoder's slice embeddings grafted into a decoder LLM by graftkit's four-phase "
        "curriculum (visual alignment, contrastive bridge, generation on positive findings, "
        "narrative fine-tuning): "
        f"{run.glm.num_visual_tokens} zone tokens, gated cross-attention before decoder layers "
        f"{list(run.glm.xattn_layers)}, LoRA r={cfg.model.lora.r}, alpha={cfg.model.lora.alpha} "
        f"({inventory.get('lora', {}).get('tensors', 0)} tensors).",
        "",
        "## Results",
        "",
    ]
    if e:
        lines += [
            f"On {e.get('volumes', '?')} {e.get('split', '')} volumes, labels extracted from the "
            f"generated reports by `{e.get('extractor', '?')}`:",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {k.replace('_', ' ')} | {_figure(v)} |" for k, v in results.items()),
        ]
        if "oracle" in metrics:
            lines.append(
                f"| cohort oracle macro F1 | {_figure(metrics['oracle'].get('macro_f1'))} |"
            )
        ablation = metrics.get("ablation", {})
        for mode in ("zero", "shuffle", "random"):
            if mode in ablation:
                lines.append(
                    f"| macro F1, {mode} visual tokens | {_figure(ablation[mode]['macro_f1'])} |"
                )
        for key, value in metrics.get("nlg", {}).items():
            lines.append(f"| {key.replace('_', '-')} | {_figure(value)} |")
    else:
        lines.append("The run was not evaluated (`graftkit eval RUN`).")
    base_load = (
        'base = AutoModelForCausalLM.from_pretrained("DIR/base")'
        if info.get("base_model") is None
        else f'base = AutoModelForCausalLM.from_pretrained("{info["base_model"]}")  # unmodified'
    )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from graftkit.bridge import GraftedLM",
        "",
        base_load,
        'glm = GraftedLM.from_pretrained("DIR", base)',
        "# slices [1, N, d_v], z_mm [1, N] (mm), mask [1, N] -> visual tokens -> a report:",
        "# graftkit.eval.generation.generate_reports(glm, glm.tokenizer, ChatPrompt(**chat.json), ...)",
        "```",
        "",
        f"Every prompt is `chat.json`'s instruction after the {run.glm.num_visual_tokens} "
        "placeholders, rendered with its fixed date; `generation_config.json` holds the decoding "
        "the results were measured with.",
        "",
        "## Reproduce",
        "",
        "```bash",
        f"graftkit run {cfg.dataset} --config config.yaml   # the resolved config of this run",
        "graftkit export RUN --output DIR",
        "```",
        "",
        f"The run's profile was `{cfg.profile or 'none'}`: `graftkit run {cfg.dataset} --profile "
        f"{cfg.profile or '...'}` with the settings in `config.yaml`. Licence: {info['license']}.",
        "",
    ]
    return "\n".join(lines)

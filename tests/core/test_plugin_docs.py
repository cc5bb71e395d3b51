"""docs/plugins.md's own examples, one per hook, build a working plugin.

Every ```python block under a hook's heading is executed as one module; the modules are
registered together (the dataset example names the extractor, the profile the compressor and
the dataset), then each registered object is used the way graftkit uses it.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from graftkit import plugins
from graftkit.compressors import CompressorPreset, build_compressor
from graftkit.config import BridgeConfig, ConfigError, DataConfig

DOC = Path(__file__).parents[2] / "docs" / "plugins.md"


def doc_examples() -> dict[str, str]:
    """``{hook: the Python code under its heading}`` in docs/plugins.md."""
    out = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M):
        heading = re.match(r"`(register_\w+)`", section)
        if heading:
            out[heading.group(1)] = "\n\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    return out


def test_every_hook_has_a_documented_example():
    examples = doc_examples()
    assert set(examples) == set(plugins.HOOKS)
    for hook, code in examples.items():
        assert f"def {hook}(register)" in code, hook


@pytest.fixture(scope="module")
def doc_plugin():
    """Each hook's example as a module, registered as a plugin for the module's tests."""
    plugins.load_plugins()
    names = []
    for hook, code in doc_examples().items():
        name = f"docs_plugins_md_{hook}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(code, f"docs/plugins.md ({hook})", "exec"), module.__dict__)
        plugins.pm.register(module, name=name)
        names.append(name)
    yield
    for name in names:
        plugins.pm.unregister(name=name)
        del sys.modules[name]


def test_encoder_example_encodes_a_file(doc_plugin, tmp_path):
    cls = plugins.get("encoder", "npy-rows")
    rows = np.random.default_rng(0).normal(size=(5, cls.dim))
    np.save(tmp_path / "case.npy", rows)
    encoded = cls(weights=None, spacing_mm=2.5).encode(tmp_path / "case.npy")
    assert np.allclose(encoded.embeddings, rows, atol=1e-6)
    assert encoded.z_mm.tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]


def test_compressor_examples_build_and_keep_padding_out(doc_plugin):
    bridge = BridgeConfig(compressor="pooled", num_zones=4, num_heads=2)
    module = build_compressor("pooled", 8, bridge)
    slices = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    tokens = module(slices, mask=mask)
    assert tokens.shape == (2, 4, 8)
    alone = module(slices[1:, :6])  # the padded item, processed alone and unpadded
    assert torch.allclose(tokens[1], alone[0], atol=1e-6)

    preset = plugins.get("compressor", "zone-16x4")
    assert isinstance(preset, CompressorPreset)
    zone = build_compressor("zone-16x4", 8, BridgeConfig(num_zones=16, num_heads=4, dropout=0.3))
    assert zone.num_zones == 16 and zone.config.dropout == 0.3  # dropout stays with the run
    with pytest.raises(ConfigError, match=r"bridge.num_zones=32 \(fixed: 16\)"):
        build_compressor("zone-16x4", 8, BridgeConfig(num_heads=4))


def test_extractor_example_extracts(doc_plugin):
    extractor = plugins.get("extractor", "keywords")()
    labels = extractor.extract(["Cardiomegaly.", "Pleural effusion and cardiomegaly.", "Clear."])
    assert labels.tolist() == [[1, 0], [1, 1], [0, 0]]
    assert extractor.extract([]).shape == (0, 2)


def test_dataset_example_serves_the_curriculum(doc_plugin, tmp_path):
    cls = plugins.get("dataset", "toy")
    dataset = cls(DataConfig(), tmp_path)
    train, valid = dataset.records("train"), dataset.records("valid")
    assert (len(train), len(valid)) == (32, 8)
    slices, z_mm = dataset.load(train[3])
    assert slices.shape == (12, dataset.embedding_dim) and z_mm.shape == (12,)
    assert torch.equal(dataset.load(train[3])[0], slices)  # a pure function of the volume
    # the texts name exactly the labels, as read by the dataset's default extractor
    extractor = plugins.get("extractor", cls.default_extractor)()
    texts = [dataset.narrative_text(v) for v in train]
    assert extractor.extract(texts).tolist() == [v.labels.tolist() for v in train]
    assert dataset.positive_findings_text(train[0], __import__("random").Random(0))


def test_profile_examples_configure_a_run(doc_plugin):
    from graftkit.config.layers import resolve_config

    cfg, _ = resolve_config("toy")  # the dataset's default profile
    assert cfg.profile == "toy-quick" and cfg.bridge.compressor == "pooled"
    assert cfg.bridge.num_zones == 4 and cfg.phases.get(1).epochs == 1
    assert resolve_config("toy", profile="toy-2gpu")[0].launch.num_processes == 2


def test_callback_example_freezes_its_group_and_resumes_frozen(doc_plugin):
    from graftkit.config import PhaseConfig
    from graftkit.curriculum.callbacks import PhaseContext, build_callbacks

    phase = PhaseConfig(
        name="p",
        trainable=["heads"],
        losses={"bce": 1.0},
        text="conditions",
        epochs=3,
        batch_size=2,
        lr=1e-3,
        callbacks={"freeze_group": {"group": "heads", "after_epoch": 2}},
    )
    (callback,) = build_callbacks(phase, 1)
    heads = {"w": torch.nn.Parameter(torch.zeros(2))}
    glm = SimpleNamespace(parameter_groups=lambda: {"heads": heads})
    ctx = PhaseContext(SimpleNamespace(glm=glm), 1, phase)
    row: dict = {}
    callback.on_epoch_begin(ctx, 1)
    callback.on_evaluate(ctx, 1, row)
    assert heads["w"].requires_grad and row == {"heads_frozen": 0.0}
    callback.on_epoch_begin(ctx, 2)
    assert not heads["w"].requires_grad
    resumed = build_callbacks(phase, 1)[0]
    resumed.load_state_dict(callback.state_dict())
    heads["w"].requires_grad_(True)
    resumed.on_epoch_begin(ctx, 0)  # a resumed phase re-applies the freeze at once
    assert not heads["w"].requires_grad

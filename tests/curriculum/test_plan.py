"""`graftkit plan` builds the paper model on the meta device: no weights, no download."""

from graftkit.config.layers import resolve_config
from graftkit.curriculum.plan import plan


def test_paper_profile_plan_reports_392_lora_tensors_and_adapters_at_7_14_21():
    result = plan(resolve_config("ct_rate", profile="paper")[0])
    assert result["lora_tensors"] == 392  # 28 layers x 7 projections x (A, B)
    # Llama-3.2-3B's 3,212,749,824 parameters (the lm_head is the tied embedding matrix, counted
    # once) + one embedding row for the visual placeholder token
    assert result["llm"]["parameters"] == 3_212_749_824 + 3072
    assert result["adapter_layers"] == [7, 14, 21]
    assert (
        result["visual_tokens"] == 32
        and result["visual_dim"] == 1024
        and result["text_dim"] == 3072
    )
    p3, p4 = result["phases"]["3"], result["phases"]["4"]
    assert set(p3["trainable"]) == {"predictor", "lora", "xattn", "projectors", "heads"}
    assert set(p4["trainable"]) == {"lora"} and p4["trainable_tensors"] == 392
    assert p3["estimated_memory_gib_per_gpu"] > p4["estimated_memory_gib_per_gpu"] > 0


def test_release_profile_plan_is_the_paper_with_lora_r64():
    """The model card's LoRA r = 64 on Llama-3.2-3B's seven projections, counted by hand from its
    shapes (hidden 3,072; 8 KV heads x 128 = 1,024; MLP 8,192): r x (in + out) per projection."""
    release = plan(resolve_config("ct_rate", profile="release")[0])
    paper = plan(resolve_config("ct_rate", profile="paper")[0])
    h, kv, mlp = 3072, 1024, 8192
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + mlp) + (mlp + h)  # q k v o gate up down
    assert release["inventory"]["lora"]["parameters"] == 28 * 64 * per_layer == 97_255_424
    assert paper["inventory"]["lora"]["parameters"] == 28 * 16 * per_layer
    assert release["lora_tensors"] == paper["lora_tensors"] == 392
    others = {k: v for k, v in release["inventory"].items() if k != "lora"}
    assert others == {k: v for k, v in paper["inventory"].items() if k != "lora"}
    assert release["phases"]["4"]["trainable"] == {"lora": 97_255_424}

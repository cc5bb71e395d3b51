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

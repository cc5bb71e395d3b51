"""The whitened text space the visual side is aligned to (docs/design.md data flow, last line).

Text -> LLM hidden states at a layer ``ℓ`` (a depth fraction of the decoder), mean-pooled over
the text's tokens -> :class:`~graftkit.align.PCAWhitening` fitted on the training texts -> ``z_t``.
The LLM is frozen while these embeddings are used (phases 1-2), so each unique text is embedded
once and cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from graftkit.align import PCAWhitening


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    batch_size: int = 32,
    max_length: int = 128,
) -> torch.Tensor:
    """Mean-pooled hidden state of decoder layer ``layer`` for each text, ``[n, d_l]`` float32."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(
            chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


class TextSpace:
    """Whitened embeddings of every text a run aligns to, keyed by the text itself."""

    def __init__(
        self, whitening: PCAWhitening, texts: list[str], embeddings: torch.Tensor, stats: dict
    ):
        self.whitening = whitening
        self.index = {t: i for i, t in enumerate(texts)}
        self.texts = texts
        self.embeddings = embeddings  # whitened, [n, D]
        self.stats = stats

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __getitem__(self, text: str) -> torch.Tensor:
        return self.embeddings[self.index[text]]

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        tokenizer,
        texts: Sequence[str],
        layer: int,
        n_components: int,
        groups: Sequence[int] | None = None,
        extra_texts: Sequence[str] = (),
    ) -> TextSpace:
        """Embed ``texts`` (deduplicated), fit the whitening on them and record anisotropy stats.

        ``extra_texts`` (e.g. the validation split's) are embedded with the fitted whitening but
        do not take part in the fit.
        """
        from graftkit.align.anisotropy import discriminability, mean_pairwise_cosine

        unique = list(dict.fromkeys(texts))
        raw = embed_texts(model, tokenizer, unique, layer)
        k = max(1, min(n_components, raw.shape[0] - 1, raw.shape[1]))
        whitening = PCAWhitening(n_components=k).fit([raw])
        white = whitening.transform(raw).float()
        stats = {
            "texts": len(unique),
            "components": k,
            "variance_retained": float(whitening.explained_variance_ratio.sum()),
            "mean_cosine_raw": float(mean_pairwise_cosine(raw)),
            "mean_cosine_whitened": float(mean_pairwise_cosine(white)),
        }
        if groups is not None:
            first = {t: g for t, g in zip(texts, groups, strict=True)}
            labels = torch.tensor([first[t] for t in unique])
            stats["dprime_raw"] = float(discriminability(raw, labels))
            stats["dprime_whitened"] = float(discriminability(white, labels))
        seen = set(unique)
        extra = [t for t in dict.fromkeys(extra_texts) if t not in seen]
        if extra:
            white = torch.cat(
                [white, whitening.transform(embed_texts(model, tokenizer, extra, layer)).float()]
            )
        return cls(whitening, unique + extra, white, stats)

    def save(self, directory: Path) -> None:
        """Write the folder whole or not at all (:func:`graftkit.io.atomic_dir`)."""
        import json
        import shutil

        from graftkit.io import atomic_dir

        if directory.is_dir() and not (directory / "texts.json").is_file():
            shutil.rmtree(directory)  # a partial folder an older version's killed save left
        with atomic_dir(directory) as tmp:
            self.whitening.save(tmp / "whitening.safetensors")
            save_file({"embeddings": self.embeddings.contiguous()}, str(tmp / "texts.safetensors"))
            (tmp / "texts.json").write_text(json.dumps({"texts": self.texts, "stats": self.stats}))

    @classmethod
    def load(cls, directory: Path) -> TextSpace:
        """Read a saved text space; a damaged file raises
        :class:`~graftkit.checkpoint.CheckpointError` naming it and what is wrong."""
        from graftkit.checkpoint import check_folder, read_json

        check_folder(directory)
        meta = read_json(directory / "texts.json")
        emb = load_file(str(directory / "texts.safetensors"))["embeddings"]
        return cls(
            PCAWhitening.load(directory / "whitening.safetensors"),
            meta["texts"],
            emb,
            meta["stats"],
        )

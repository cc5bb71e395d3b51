"""Benchmark of ``lejepa-ct``: encoder slices/s, reader + preprocessing slices/s, the
end-to-end volumes/hour they imply, and a FLOP-based GPU estimate.

    python benchmarks/bench_encoders.py            # full: 2 timed batches, larger volumes
    python benchmarks/bench_encoders.py --quick    # 1 timed batch

The encoder is the full-size ViT-L/14 (``vit_large_patch14_dinov2`` geometry, random weights: the
cost does not depend on the values), batch 16, 252 × 252 slices (what the default
``transform=cropped_global`` feeds it). The reader side reads a 512 × 512 NIfTI (.nii.gz, int16)
and a 512 × 512 DICOM series written beforehand, and runs the preprocessing of
``LeJepaCTEncoder.encode`` (``transform=cropped_global``, and ``full`` on the NIfTI). Target:
reader >= 5x the encoder's rate.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from graftkit_encoders.lejepa import LeJepaCTConfig, LeJepaCTEncoder
from graftkit_encoders.readers import read_volume

BATCH = 16
IMAGE = 252
SLICES_PER_VOLUME = 300
"""Slices of a typical CT-RATE volume (NumberofSlices spans 100-1617) for the volumes/hour figures."""
H100_BF16_DENSE_TFLOPS = 989.4
ASSUMED_MFU = 0.40


def phantom(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """``[n, size, size]`` int16 HU: air, a body ellipse with lungs and a table, noise."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size] / size
    s = np.full((size, size), -1000.0, dtype=np.float32)
    s[((r - 0.5) / 0.3) ** 2 + ((c - 0.5) / 0.42) ** 2 <= 1] = 40
    for side in (-1, 1):
        s[((r - 0.48) / 0.2) ** 2 + ((c - 0.5 - side * 0.17) / 0.12) ** 2 <= 1] = -850
    s[(r > 0.85) & (r < 0.88)] = 200  # the patient table
    vol = np.repeat(s[None], n, axis=0) + rng.normal(0, 20, (n, size, size)).astype(np.float32)
    return np.round(vol).astype(np.int16)


def write_inputs(folder: Path, n_nifti: int, n_dicom: int) -> tuple[Path, Path]:
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    nifti = folder / "bench_ct.nii.gz"
    vol = phantom(n_nifti)
    data = np.ascontiguousarray(np.transpose(vol, (2, 1, 0))[::-1, ::-1, :])
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 1.5, 1.0])), str(nifti))

    series = folder / "bench_series"
    series.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    stored = phantom(n_dicom, seed=1) + 1024  # stored values; RescaleIntercept -1024
    uid = generate_uid()
    for k in range(n_dicom):
        ds = copy.deepcopy(base)
        ds.Rows, ds.Columns = 512, 512
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * k]
        ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), uid
        ds.PixelData = stored[k].tobytes()
        ds.save_as(str(series / f"{k:04d}.dcm"))
    return nifti, series


def bench_reader(path: Path, config: LeJepaCTConfig) -> tuple[float, int]:
    """Seconds to read ``path`` and preprocess every slice as ``encode`` does (``config``'s
    transform), and the slice count."""
    from graftkit_encoders.lejepa import SlicePreprocessor

    pre = SlicePreprocessor(config)
    start = time.perf_counter()
    volume = read_volume(path)
    for _ in pre.chunks(volume.hu, path.name, BATCH):
        pass
    return time.perf_counter() - start, volume.hu.shape[0]


def vit_flops_per_slice(config: LeJepaCTConfig, image: int = IMAGE) -> float:
    """Matmul FLOPs (2 per multiply-add) of one slice through the ViT."""
    d, p = config.hidden_size, config.patch_size
    patches = (image // p) ** 2
    t = patches + 1
    per_layer = 2 * t * d * (3 * d + d + 2 * config.mlp_ratio * d) + 2 * 2 * t * t * d
    return 2 * patches * d * p * p + config.num_hidden_layers * per_layer


def run(quick: bool = False) -> list[dict]:
    """All figures as rows ``{benchmark, value, unit, note}``."""
    timed_batches = 1 if quick else 2
    rows: list[dict] = []
    encoder = LeJepaCTEncoder(allow_random_weights=True, batch_size=BATCH)
    config = encoder.config
    pixels = torch.rand(BATCH, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    encoder.embed_slices(pixels[:2])  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(timed_batches):
        encoder.embed_slices(pixels)
    enc_rate = timed_batches * BATCH / (time.perf_counter() - start)
    enc_cpu_rate = timed_batches * BATCH / (time.process_time() - cpu_start)
    rows.append(
        {
            "benchmark": "encoder ViT-L/14 (batch 16, 252x252, fp32, CPU)",
            "value": enc_rate,
            "unit": "slices/s",
            "note": f"{timed_batches} timed batch(es), torch threads {torch.get_num_threads()}",
        }
    )
    rows.append(
        {
            "benchmark": "encoder ViT-L/14, per CPU-second",
            "value": enc_cpu_rate,
            "unit": "slices/CPU-s",
            "note": "process CPU time: robust to a shared machine; idle k-core rate ~ k x this",
        }
    )
    del encoder

    with tempfile.TemporaryDirectory() as tmp:
        nifti, series = write_inputs(
            Path(tmp), n_nifti=48 if quick else 120, n_dicom=24 if quick else 60
        )
        reader_rates = {}
        full = config.model_copy(update={"transform": "full"})
        for label, path, cfg in (
            ("NIfTI .nii.gz 512x512, cropped_global", nifti, config),
            ("DICOM series 512x512, cropped_global", series, config),
            ("NIfTI .nii.gz 512x512, full", nifti, full),
        ):
            bench_reader(path, cfg)  # page cache warm, imports done
            seconds, n = bench_reader(path, cfg)
            reader_rates[label] = n / seconds
            rows.append(
                {
                    "benchmark": f"reader + preprocessing, {label}",
                    "value": n / seconds,
                    "unit": "slices/s",
                    "note": f"{n} slices; {n / seconds / enc_rate:.0f}x the encoder (target >= 5x)",
                }
            )
    slowest_reader = min(v for k, v in reader_rates.items() if k.endswith("cropped_global"))
    per_volume = SLICES_PER_VOLUME / enc_rate + SLICES_PER_VOLUME / slowest_reader
    rows.append(
        {
            "benchmark": f"end to end, {SLICES_PER_VOLUME}-slice volume (CPU)",
            "value": 3600 / per_volume,
            "unit": "volumes/h",
            "note": "derived: read+preprocess (slowest reader) then encode, per process",
        }
    )
    flops = vit_flops_per_slice(config)
    gpu_rate = H100_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_MFU / flops
    rows.append(
        {
            "benchmark": "ViT-L/14 FLOPs per 252x252 slice",
            "value": flops / 1e9,
            "unit": "GFLOP",
            "note": "matmuls, 2 per MAC; transform=cropped_global",
        }
    )
    rows.append(
        {
            "benchmark": "ViT-L/14 FLOPs per 504x504 slice",
            "value": vit_flops_per_slice(config, 504) / 1e9,
            "unit": "GFLOP",
            "note": "transform=full on a 512x512 slice (1297 tokens)",
        }
    )
    rows.append(
        {
            "benchmark": "ESTIMATE: encoder on one H100 (bf16)",
            "value": gpu_rate,
            "unit": "slices/s",
            "note": f"estimate, not measured: {H100_BF16_DENSE_TFLOPS} TFLOP/s dense x {ASSUMED_MFU:.0%} MFU",
        }
    )
    gpu_volume = SLICES_PER_VOLUME / gpu_rate + SLICES_PER_VOLUME / slowest_reader
    rows.append(
        {
            "benchmark": f"ESTIMATE: end to end on one H100, {SLICES_PER_VOLUME}-slice volume",
            "value": 3600 / gpu_volume,
            "unit": "volumes/h",
            "note": "estimate; with one reader process on this CPU the reader then bounds it",
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rows = run(quick=args.quick)
    width = max(len(r["benchmark"]) for r in rows)
    for r in rows:
        print(f"{r['benchmark']:<{width}}  {r['value']:>10.2f} {r['unit']:<10} {r['note']}")


if __name__ == "__main__":
    main()

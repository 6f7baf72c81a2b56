"""Checks that need a CUDA GPU: fp16/bf16 training of stage 2 and joint, and the benchmark on the GPU.

Skipped without CUDA (CI has none). On a GPU machine: ``python -m pytest -q tests/test_gpu.py``.
"""
import pathlib

import pytest
import torch

from anchor_reg.benchmark import cli
from tiny import check_mixed_precision_outputs, run_pipeline, run_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("yaml_name", ["stage2.yaml", "joint.yaml"])
def test_mixed_precision_training_on_gpu(yaml_name, precision, tmp_path, caplog):
    run = run_pipeline if yaml_name == "stage2.yaml" else run_train  # stage 2 needs its base: the whole chain
    run(yaml_name, tmp_path, "--device=cuda:0", f"--precision={precision}")
    assert "has no effect on CPU" not in caplog.text
    stage = "stage2" if yaml_name == "stage2.yaml" else "joint"
    folder = tmp_path / "results" / "default" / "1986" / stage
    assert f"Using training precision: `--precision={precision}`" in (folder / "log.txt").read_text()
    ckpt = check_mixed_precision_outputs(folder, with_anchors=stage == "stage2")
    assert ("scaler" in ckpt.paramfiles) is (precision == "fp16")  # the GradScaler is checkpointed for fp16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_benchmark_runs_on_gpu(precision, tmp_path):
    options = cli.parse_args([
        "--quick", "--device", "cuda", "--precision", precision, "--channels", "64", "--batch_size", "8",
        "--crop", "1.0", "--speakers", "50", "--store_rows", "20000", "--steps", "2",
        "--output", str(tmp_path / "benchmark.json"),
    ])
    sizes = {"embed_utterances": 8, "corpus_speakers": 8, "corpus_utterances": 4, "eval_speakers": 3,
             "loader_steps": 3, "lookups": 5}
    out = cli.run_benchmarks(options, pathlib.Path(tmp_path) / "work", sizes=sizes, log=lambda _: None)
    assert out["settings"]["device_name"] == torch.cuda.get_device_name(0)
    figures = {f["name"]: f for f in out["figures"]}
    assert figures["stage2_utterances_per_s"]["value"] > 0
    assert "max_memory_allocated" in figures["peak_memory_ratio"]["details"]["method"]

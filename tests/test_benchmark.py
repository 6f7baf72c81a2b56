"""The benchmark at tiny sizes: every figure runs and reports a sane result (timings are not checked)."""
import json
import math

import pytest
import torch

from anchor_reg import benchmark

TINY = ["--channels", "16", "--batch_size", "2", "--crop", "0.5", "--eval_batch_size", "2", "--speakers", "8",
        "--store_rows", "3000", "--steps", "1"]
TINY_SIZES = {"embed_utterances": 4, "utterance_seconds": (0.4, 1.0), "eval_speakers": 3, "eval_utterances": 2,
              "eval_seconds": 0.5, "loader_steps": 2, "lookups": 5}
FIGURES = {
    "anchor_term_overhead", "live_teacher_cost", "live_teacher_cost_noisy_only", "batched_embedding_speedup", "noisy_evaluation_cost",
    "data_wait_fraction", "anchor_store_memory", "anchor_store_save_s", "anchor_store_load_s",
    "anchor_store_lookup_ms", "peak_memory_ratio", "stage1_utterances_per_s", "stage2_utterances_per_s",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One tiny run of every figure, through the command line's own pieces."""
    tmp = tmp_path_factory.mktemp("bench")
    options = benchmark.parse_args(["--quick", "--output", str(tmp / "out" / "benchmark.json"), *TINY])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: waking a second thread costs more than it saves
    try:
        out = benchmark.run_benchmarks(options, tmp / "work", sizes=TINY_SIZES, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    benchmark.write_json(out, options.output)
    return out, tmp


def test_every_figure_reports_a_finite_value_and_its_target(results):
    out, _ = results
    figures = {f["name"]: f for f in out["figures"]}
    assert set(figures) == FIGURES
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] >= 0, name
        assert fig["description"]
        if name in benchmark.TARGETS:
            op, target = benchmark.TARGETS[name]
            assert fig["target"] == f"{op} {target:g}"
            assert fig["passed"] is (fig["value"] <= target if op == "<=" else fig["value"] >= target)
        else:
            assert fig["target"] is None and fig["passed"] is None
    assert out["passed"] + out["failed"] == len(benchmark.TARGETS)


def test_side_by_side_timings_are_positive_and_interleaved(results):
    out, _ = results
    figures = {f["name"]: f for f in out["figures"]}
    for name, variants in [("anchor_term_overhead", ("with_anchor", "without_anchor")),
                           ("live_teacher_cost", ("live_teacher", "fixed_anchors")),
                           ("live_teacher_cost_noisy_only", ("live_teacher", "fixed_anchors")),
                           ("batched_embedding_speedup", ("batched", "one_at_a_time")),
                           ("noisy_evaluation_cost", ("clean_only", "all_conditions"))]:
        timings = figures[name]["details"]["timings"]
        for variant in variants:
            assert timings[variant]["median_s"] > 0 and all(t > 0 for t in timings[variant]["times_s"])
    # the training steps see the clean crop and its noisy copy (2B rows); the teacher sees the B clean crops
    assert figures["anchor_term_overhead"]["details"]["rows_through_net"] == 4
    assert figures["live_teacher_cost"]["details"]["teacher_rows"] == 2
    assert figures["live_teacher_cost"]["details"]["rows_through_net"] == 4
    # with clean_copies=False only the noisy copy goes through the network
    assert figures["live_teacher_cost_noisy_only"]["details"]["rows_through_net"] == 2


def test_figure_details_are_consistent(results):
    out, _ = results
    figures = {f["name"]: f for f in out["figures"]}
    embedding = figures["batched_embedding_speedup"]["details"]
    assert embedding["utterances"] == 4 and 0 < embedding["cosine_min"] <= embedding["cosine_mean"] <= 1 + 1e-6
    evaluation = figures["noisy_evaluation_cost"]["details"]
    assert evaluation["conditions"] == 17 and evaluation["utterances"] == 6 and evaluation["corrupted_utterances"] == 3
    loading = figures["data_wait_fraction"]["details"]
    assert 0 <= figures["data_wait_fraction"]["value"] < 1 and len(loading["wait_s"]) == 2
    store = figures["anchor_store_memory"]["details"]
    assert store["rows"] == 3000 and store["raw_bytes"] == 3000 * 192 * 4
    assert store["store_nbytes"] >= store["raw_bytes"]
    memory = figures["peak_memory_ratio"]["details"]
    assert memory["stage1_bytes"] >= 0 and memory["stage2_bytes"] >= 0 and "fresh subprocess" in memory["method"]


def test_json_and_table(results):
    out, tmp = results
    written = json.loads((tmp / "out" / "benchmark.json").read_text())
    assert written["figures"] == json.loads(json.dumps(out["figures"]))
    assert written["settings"]["channels"] == 16 and written["settings"]["mode"] == "quick"
    table = benchmark.format_table(out)
    assert table.count("| anchor_") == 5 and ("PASS" in table or "FAIL" in table)
    assert f"{out['passed']} passed, {out['failed']} failed." in table


def test_voxceleb2_ids_are_unique_and_shaped_like_voxceleb2():
    ids = benchmark.voxceleb2_ids(5000)
    assert len(set(ids)) == 5000
    spk, video, rest = ids[123].split("--")
    assert spk.startswith("id") and len(spk) == 7 and len(video) == 11 and rest.endswith("_0_48000")
    store = benchmark.random_store(ids[:50])
    assert torch.allclose(store.lookup(ids[:3]).norm(dim=1), torch.ones(3))


def test_figure_verdicts():
    assert benchmark.figure("anchor_term_overhead", 1.04, "x")["passed"] is True
    assert benchmark.figure("anchor_term_overhead", 1.06, "x")["passed"] is False
    assert benchmark.figure("live_teacher_cost", 1.31, "x")["passed"] is True
    assert benchmark.figure("stage1_utterances_per_s", 10.0, "x")["passed"] is None


def test_interleaved_alternates_the_order():
    calls = []
    out = benchmark.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, "cpu", warmup=0)
    assert calls == ["a", "b", "b", "a"]
    assert len(out["a"]["times_s"]) == 2


def test_bad_options_are_refused():
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--precision", "fp16"])  # fp16 needs CUDA


def test_cpu_peak_sees_a_temporary_allocation():
    peak, method = benchmark.cpu_peak(lambda: torch.ones(64 * 2**20 // 4).sum())  # 64 MiB, freed at once
    assert 48 * 2**20 <= peak < 256 * 2**20, method

"""The benchmark at tiny sizes: every figure runs on the real Brains and reports a consistent result.

Timings are not checked (they depend on the machine); what is checked is what
each figure measured: the rows through the network, the conditions evaluated,
the Brain whose ``fit_batch`` ran, the table and JSON written.
"""
import argparse
import json
import math

import pytest
import speechbrain as sb
import torch

from anchor_reg.benchmark import cli, figures, timing, workload
from anchor_reg.data.trials import read_trial_list
from anchor_reg.losses import ContrastiveAnchorLoss

TINY = ["--channels", "16", "--batch_size", "2", "--crop", "0.5", "--eval_batch_size", "2", "--speakers", "8",
        "--store_rows", "3000", "--steps", "1"]
TINY_SIZES = {"embed_utterances": 4, "utterance_seconds": (0.4, 1.0), "corpus_speakers": 5, "corpus_utterances": 3,
              "eval_speakers": 2, "loader_steps": 2, "lookups": 5}
FIGURE_NAMES = {
    "anchor_term_overhead", "live_teacher_cost", "live_teacher_cost_noisy_only", "batched_embedding_speedup",
    "noisy_evaluation_cost", "data_wait_fraction", "anchor_store_memory", "anchor_store_save_ratio",
    "anchor_store_load_s", "anchor_store_rank_memory", "anchor_store_lookup_ms", "peak_memory_ratio",
    "stage1_utterances_per_s", "stage2_utterances_per_s", "joint_utterances_per_s", "contrastive_term_overhead",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One tiny run of every figure through the command line's own pieces (read-only for the tests)."""
    tmp = tmp_path_factory.mktemp("bench")
    options = cli.parse_args(["--quick", "--output", str(tmp / "out" / "benchmark.json"), *TINY])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: waking a second thread costs more than it saves
    try:
        out = cli.run_benchmarks(options, tmp / "work", sizes=TINY_SIZES, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    cli.write_json(out, options.output)
    return out, tmp


@pytest.mark.slow
def test_every_figure_reports_a_finite_value_and_a_verdict_where_it_has_a_target(results):
    out, _ = results
    by_name = {f["name"]: f for f in out["figures"]}
    assert set(by_name) == FIGURE_NAMES
    for name, fig in by_name.items():
        assert math.isfinite(fig["value"]) and fig["value"] >= 0, name
        assert fig["description"]
        if name in figures.TARGETS:
            assert fig["target"].split()[0] in ("<=", ">=") and isinstance(fig["passed"], bool)
        else:
            assert fig["target"] is None and fig["passed"] is None
    assert out["passed"] + out["failed"] == len(figures.TARGETS) == 12  # every target is met or missed once


@pytest.mark.slow
def test_side_by_side_timings_are_positive_and_rows_are_the_recipes(results):
    out, _ = results
    by_name = {f["name"]: f for f in out["figures"]}
    for name, variants in [("anchor_term_overhead", ("with_anchor", "without_anchor")),
                           ("contrastive_term_overhead", ("contrastive", "without_anchor")),
                           ("live_teacher_cost", ("live_teacher", "fixed_anchors")),
                           ("live_teacher_cost_noisy_only", ("live_teacher", "fixed_anchors")),
                           ("batched_embedding_speedup", ("batched", "one_at_a_time")),
                           ("noisy_evaluation_cost", ("clean_only", "all_conditions"))]:
        timings = by_name[name]["details"]["timings"]
        for variant in variants:
            assert timings[variant]["median_s"] > 0 and all(t > 0 for t in timings[variant]["times_s"])
    # the training steps see the clean crop and its noisy copy (2B rows); the teacher sees the B clean crops
    assert by_name["anchor_term_overhead"]["details"]["rows_through_net"] == 4
    assert by_name["contrastive_term_overhead"]["details"]["rows_through_net"] == 4
    assert by_name["live_teacher_cost"]["details"]["teacher_rows"] == 2
    assert by_name["live_teacher_cost"]["details"]["rows_through_net"] == 4
    # with clean_copies=False only the noisy copy goes through the network
    assert by_name["live_teacher_cost_noisy_only"]["details"]["rows_through_net"] == 2


@pytest.mark.slow
def test_figure_details_match_the_prepared_data(results):
    out, tmp = results
    by_name = {f["name"]: f for f in out["figures"]}
    embedding = by_name["batched_embedding_speedup"]["details"]
    assert embedding["utterances"] == 4 and 0 < embedding["cosine_min"] <= embedding["cosine_mean"] <= 1 + 1e-6
    assert 0.4 <= embedding["seconds_min"] and embedding["seconds_max"] <= 1.0
    # the evaluation ran on the trials the preparation wrote: clean + 3 noise types x 5 SNRs + reverb
    (trials_file,) = (tmp / "work").rglob("prepared/trials.txt")
    trials = read_trial_list(trials_file)
    evaluation = by_name["noisy_evaluation_cost"]["details"]
    assert evaluation["conditions"] == 1 + 3 * 5 + 1
    assert evaluation["utterances"] == len({name for _, e, t in trials for name in (e, t)})
    assert evaluation["corrupted_utterances"] == len({t for _, _, t in trials})
    loading = by_name["data_wait_fraction"]["details"]
    assert 0 <= by_name["data_wait_fraction"]["value"] < 1 and len(loading["wait_s"]) == 2
    store = by_name["anchor_store_memory"]["details"]
    assert store["rows"] == 3000 and store["raw_bytes"] == 3000 * 192 * 4
    assert store["store_nbytes"] >= store["raw_bytes"]  # the store holds at least the float32 anchors
    assert store["file_bytes"] >= store["raw_bytes"] and store["embeddings_mapped_from_file"]
    save = by_name["anchor_store_save_ratio"]["details"]  # both writes timed twice, in alternating order
    assert [len(save["times"][k]["times_s"]) for k in ("save", "raw")] == [2, 2]
    assert by_name["anchor_store_save_ratio"]["value"] == pytest.approx(save["save_s"] / save["raw_write_s"])
    # both ranks held the store the figure saved (rebuilt here from the same IDs and seed), in pages they share
    ranks = by_name["anchor_store_rank_memory"]["details"]
    expected = workload.random_store(workload.voxceleb2_ids(3000)).digest()
    assert ranks["digests"] == [expected, expected]
    for rank in (0, 1):
        assert ranks[f"rank{rank}_shared_growth_bytes"] >= store["raw_bytes"]
        assert ranks[f"rank{rank}_rss_growth_bytes"] >= ranks[f"rank{rank}_private_growth_bytes"] + store["raw_bytes"]
        assert 0 < ranks[f"rank{rank}_load_s"] < 5
    assert by_name["anchor_store_rank_memory"]["target"] == "<= 0.1"
    memory = by_name["peak_memory_ratio"]["details"]
    assert memory["stage1_bytes"] > 0 and memory["stage2_bytes"] > 0 and "fresh subprocess" in memory["method"]
    assert by_name["peak_memory_ratio"]["value"] == pytest.approx(memory["stage2_bytes"] / memory["stage1_bytes"])


@pytest.mark.slow
def test_json_and_table(results):
    out, tmp = results
    written = json.loads((tmp / "out" / "benchmark.json").read_text())
    assert written["figures"] == json.loads(json.dumps(out["figures"]))
    assert written["settings"]["channels"] == 16 and written["settings"]["mode"] == "quick"
    table = cli.format_table(out).splitlines()
    for fig in out["figures"]:
        (line,) = [row for row in table if row.startswith(f"| {fig['name']} |")]
        verdict = {None: "–", True: "PASS", False: "FAIL"}[fig["passed"]]
        assert line.endswith(f"| {verdict} |") and f"| {fig['value']:.4g} |" in line
    assert table[-1] == f"{out['passed']} passed, {out['failed']} failed."


@pytest.mark.slow
def test_the_timed_steps_are_the_brains_own_fit_batch(tmp_path, monkeypatch):
    calls = []
    fit_batch = sb.core.Brain.fit_batch

    def spy(self, batch):
        calls.append(type(self).__name__)
        return fit_batch(self, batch)

    monkeypatch.setattr(sb.core.Brain, "fit_batch", spy)
    options = cli.parse_args(["--quick", *TINY])
    sizes = dict(cli.QUICK, **TINY_SIZES, steps=1)
    work = workload.Workload(workload.prepare(tmp_path, options, sizes), options, scratch=tmp_path)
    figures.bench_anchor_term(work, sizes)
    # one warm-up + one timed step per variant
    assert calls == ["AnchorRegBrain", "SpeakerBrain"] * 2
    total, count = work.stage2.loss_terms["anchor"]  # AnchorRegBrain's own anchor objective ran in each step
    assert count == 2 and total > 0 and "anchor" not in work.stage2_without_anchor.loss_terms
    calls.clear()
    banks = []
    forward = ContrastiveAnchorLoss.forward

    def contrastive_spy(self, embeddings, anchors, speakers, bank=None, bank_speakers=None, scale=1.0):
        banks.append((speakers.clone(), bank_speakers.clone(), bank.clone()))
        return forward(self, embeddings, anchors, speakers, bank, bank_speakers, scale)

    monkeypatch.setattr(ContrastiveAnchorLoss, "forward", contrastive_spy)
    contrastive = figures.bench_contrastive_term(work, sizes)
    assert calls == ["AnchorRegBrain", "SpeakerBrain"] * 2
    # each contrastive step drew a bank of 1024 stored anchors of speakers not in the batch
    assert len(banks) >= 2 and contrastive["details"]["negatives"] == 1024
    for speakers, bank_speakers, bank in banks[:2]:
        assert bank.shape == (1024, 192) and not set(bank_speakers.tolist()) & set(speakers.tolist())
        assert len({tuple(anchor.tolist()) for anchor in bank}) == 1024
        for k in range(0, 1024, 128):  # a bank entry is a stored row's anchor, with that row's speaker
            (row,) = torch.nonzero((work.store.embeddings == bank[k]).all(dim=1)).flatten().tolist()
            assert int(work.store.row_speaker[row]) == int(bank_speakers[k])
    calls.clear()
    figures.bench_throughput(work, sizes)
    # one warm-up round and max(2, steps // 2) = 2 timed rounds of stage 1, stage 2, joint
    assert sorted(calls) == sorted(["SpeakerBrain", "AnchorRegBrain", "JointBrain"] * 3)


def test_voxceleb2_ids_are_unique_and_shaped_like_voxceleb2():
    ids = workload.voxceleb2_ids(5000)
    assert len(set(ids)) == 5000
    spk, video, rest = ids[123].split("--")
    assert spk.startswith("id") and len(spk) == 7 and len(video) == 11 and rest.endswith("_0_48000")
    store = workload.random_store(ids[:50])
    assert torch.allclose(store.lookup(ids[:3]).norm(dim=1), torch.ones(3))
    assert store.lookup(ids[:1], "speaker").shape == (1, 192)


def test_figure_verdicts_at_and_around_the_targets():
    assert figures.figure("anchor_term_overhead", 1.05, "x")["passed"] is True
    assert figures.figure("anchor_term_overhead", 1.06, "x")["passed"] is False
    assert figures.figure("live_teacher_cost", 1.3, "x")["passed"] is True
    assert figures.figure("live_teacher_cost", 1.29, "x")["passed"] is False
    assert figures.figure("live_teacher_cost", 1.31, "x")["target"] == ">= 1.3"
    assert figures.figure("stage1_utterances_per_s", 10.0, "x")["passed"] is None


def test_interleaved_alternates_the_order_and_seeds_each_round_alike():
    calls, draws = [], {"a": [], "b": []}

    def variant(name):
        calls.append(name)
        draws[name].append(float(torch.rand(1)))

    out = timing.interleaved({"a": lambda: variant("a"), "b": lambda: variant("b")}, 2, "cpu", warmup=0, seed=7)
    assert calls == ["a", "b", "b", "a"]
    assert len(out["a"]["times_s"]) == 2
    torch.manual_seed(7)
    first = float(torch.rand(1))
    torch.manual_seed(8)
    second = float(torch.rand(1))
    assert draws["a"] == draws["b"] == [first, second]


def test_bad_options_are_refused():
    with pytest.raises(SystemExit):
        cli.parse_args(["--precision", "fp16"])  # fp16 needs CUDA


def test_cpu_peak_sees_a_temporary_allocation():
    peak, method = timing.cpu_peak(lambda: torch.ones(64 * 2**20 // 4).sum())  # 64 MiB, freed at once
    assert 48 * 2**20 <= peak < 256 * 2**20, method


def test_the_live_teacher_returns_the_frozen_base_embeddings_of_the_clean_crops():
    torch.manual_seed(0)
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    modules = {"compute_features": Fbank(n_mels=24), "mean_var_norm": InputNormalization(norm_type="sentence"),
               "embedding_model": ECAPA_TDNN(24, channels=[16, 16, 16, 16, 48], lin_neurons=8)}
    wavs = torch.randn(2, 8000)
    batch = argparse.Namespace(id=["a", "b"], sig=(wavs, torch.ones(2)))
    teacher = workload.LiveTeacher(modules, batch, "cpu")
    with torch.no_grad():
        modules["embedding_model"].eval()
        feats = modules["mean_var_norm"](modules["compute_features"](wavs[1:]), torch.ones(1))
        expected = torch.nn.functional.normalize(modules["embedding_model"](feats, torch.ones(1)).reshape(1, -1))
    torch.testing.assert_close(teacher.lookup(["b"]), expected, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.brain.modules.parameters())

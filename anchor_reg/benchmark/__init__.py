"""Side-by-side performance checks of the real trainers: every figure is a ratio of two things run in one process.

Needs no dataset: the project's own preparation (:func:`anchor_reg.data.prepare.prepare_data`)
generates a small synthetic corpus with its noises, room impulse responses, CSVs and
trials in a temporary folder (``--data`` takes the speech from a folder of speakers
instead); the VoxCeleb2-sized anchor store is random (as many rows as the preparation
cuts VoxCeleb2 dev into: :data:`anchor_reg.benchmark.workload.VOXCELEB2_ROWS`, ~2.9 M
rows of 3 s, 2.3 GB). Absolute times depend on the
machine, so each figure compares two variants measured here, interleaved::

    python -m anchor_reg.benchmark --quick            # CPU, about 5 min on 2 idle cores
    python -m anchor_reg.benchmark --device cuda --precision bf16 \\
        --channels 1024 --batch_size 128 --crop 3.0   # GPU: adds utterances/s

The figures (targets in :data:`anchor_reg.benchmark.figures.TARGETS`; the command
line runs :data:`anchor_reg.benchmark.figures.FIGURES` in order):

1. stage-2 step with vs without the anchor term (``AnchorRegBrain`` vs ``SpeakerBrain``,
   same modules and batch);
2. stage-2 step with a live teacher (a frozen copy re-embeds the clean crop) vs fixed anchors,
   for the recipe's clean + noisy batch and (no target) a noisy-only batch;
3. evaluation embeddings in length-sorted batches vs one utterance at a time;
4. the 17-condition noisy evaluation vs 17 clean passes;
5. fraction of a training step spent waiting for the DataLoader (num_workers=2);
6. the anchor store at VoxCeleb2 scale: memory, save, load (memory-mapped), batch lookup,
   and the private memory each of 2 gloo ranks (fresh processes) adds when it loads and uses it;
7. peak memory of a stage-2 step vs a stage-1 step with as many rows;
8. training throughput (utterances/s) of stage 1, stage 2 and the joint baseline (no target);
9. stage-2 step with the contrastive anchor objective (K = 1024 negatives) vs without an anchor term;
10. label-free stage-2 step (``supervision: none``) with replay rows vs without: the time a replay row
    adds, over the time of a training row.

Every training step is the Brain's own ``fit_batch`` (``anchor_reg.brains``) on
the modules, Augmenter and objectives of ``hparams/stage1.yaml``,
``stage2.yaml`` and ``joint.yaml``; embeddings and evaluation are
:func:`anchor_reg.evaluate.embed_utterances` / :func:`anchor_reg.evaluate.evaluate_model`.
Timed variants alternate (A B, B A, ...), each round seeded alike; a ratio
figure is the Hodges-Lehmann centre of the rounds' log ratios (a round's two
variants share the load of their moment and see the same kind of noise, so a
round's log ratio is symmetric about the true one), with the Wilcoxon
signed-rank interval; a time is the median of its repeats, with an interval of
order statistics. Quick mode times 16 rounds of each step-time ratio (figures
1, 2, 9 and 10). Every interval covers at least 90 %
(:mod:`~anchor_reg.benchmark.spread`), and a figure's verdict is PASS or FAIL
only when the whole interval lies on one side of the target, "unresolved"
otherwise. The interval holds the spread within the run; CPU timings also
move with whatever else runs on the machine (the table prints the load
average), so compare figures from quiet runs. Memory is
compared in fresh subprocesses (peak RSS on CPU, ``max_memory_allocated`` on
GPU); those figures are byte counts, judged on their value.

Modules: :mod:`~anchor_reg.benchmark.timing` (clocks and memory probes),
:mod:`~anchor_reg.benchmark.spread` (intervals and verdicts),
:mod:`~anchor_reg.benchmark.workload` (data, Brains, batch, store),
:mod:`~anchor_reg.benchmark.figures` (one function per figure),
:mod:`~anchor_reg.benchmark.cli` (sizes, table, JSON, command line).
"""

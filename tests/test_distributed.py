"""Multi-process DDP on CPU (gloo): stage 2 (anchor extraction included) under torchrun, and the sharded extraction."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from anchor_reg.anchors import AnchorStore
from anchor_reg.benchmark.figures import free_port
from tiny import REPO, run_train, tiny_command

pytestmark = pytest.mark.slow  # each test launches training processes

TIMEOUT_S = 240


def worker_env():
    """The environment of the worker processes: one OpenMP thread, this checkout importable."""
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def torchrun(script_args, cwd, nproc=2):
    """Runs ``torch.distributed.run`` with ``nproc`` CPU processes; returns (returncode, output)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", *script_args]
    proc = subprocess.Popen(command, cwd=cwd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # torchrun stops its workers (they are not in its process group)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s:\n{output[-3000:]}")
    return proc.returncode, output


def train_ids(prep_folder):
    lines = (prep_folder / "train.csv").read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines]


def test_torchrun_stage2_on_two_cpu_processes(tmp_path):
    """`torchrun --nproc_per_node=2 train.py hparams/stage2.yaml --distributed_backend=gloo --device=cpu` on a base
    trained by `train.py hparams/stage1.yaml`: the two processes extract the anchors, then train."""
    run_train("stage1.yaml", tmp_path)
    returncode, output = torchrun(
        ["train.py", *tiny_command("stage2.yaml", tmp_path, "--distributed_backend=gloo")], cwd=REPO
    )
    assert returncode == 0, output[-5000:]
    root = tmp_path / "results" / "default" / "1986"
    for stage in ("stage1", "stage2"):
        log = (root / stage / "train_log.txt").read_text()
        assert log.count("epoch: 1,") == 1, f"{stage} did not train exactly one epoch:\n{log}"
    assert "loss_anchor" in (root / "stage2" / "train_log.txt").read_text()
    # exactly one anchor per training row: none missing, none repeated by the DistributedSampler's padding
    ids = train_ids(root.parent / "prepared")
    store = AnchorStore.from_file(root / "anchors" / "anchors.pt")
    stored = [i.decode() for i in store.ids]
    assert len(stored) == len(set(stored)) == len(ids)
    assert sorted(stored) == sorted(ids)
    assert torch.allclose(store.embeddings.norm(dim=1), torch.ones(len(store)), atol=1e-5)


EXTRACTION_WORKER = textwrap.dedent(
    """
    import json
    import os
    import sys
    import types

    import speechbrain as sb
    import torch

    from anchor_reg.anchors import extract_anchors, load_or_extract
    from anchor_reg.benchmark.timing import mapped_file

    NUM_ROWS, OUT = int(sys.argv[1]), sys.argv[2]
    GIVEN_ANCHORS = len(sys.argv) > 3  # a path for load_or_extract alone (the write-failure test)
    anchors_file = sys.argv[3] if GIVEN_ANCHORS else OUT + ".load_or_extract.pt"
    distributed = "RANK" in os.environ  # under torchrun; else the single-process reference
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    data = {f"row{i:02d}": {"value": i} for i in range(NUM_ROWS)}
    dataset = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("value")
    @sb.utils.data_pipeline.provides("sig", "spk_id")
    def pipeline(value):
        yield torch.full((5,), float(value))
        yield f"spk{value % 3}"

    sb.dataio.dataset.add_dynamic_item([dataset], pipeline)
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig", "spk_id"])

    def embed(wavs, lens):  # row i -> (1, i + 1, 0, ...), so each anchor names its row
        out = torch.zeros(len(wavs), 1, 4)
        out[:, 0, 0], out[:, 0, 1] = 1.0, wavs[:, 0] + 1
        return out

    if distributed and not GIVEN_ANCHORS:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
        loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=2, sampler=sampler)
        seen = [i for batch in loader for i in batch.id]
        store = extract_anchors(embed, loader, progressbar=False)
        print(f"rank {rank} embedded {seen}; extract_anchors returned {type(store).__name__}", flush=True)
        if rank == 0:
            store.save(OUT)
        torch.distributed.barrier()
    base = types.SimpleNamespace(embedder=lambda device: embed, fingerprint="stub", emb_dim=4, provenance={},
                                 source="stub")
    try:
        store = load_or_extract(base, dataset, anchors_file, row_ids=list(data), batch_size=2, progressbar=False)
    except Exception as err:
        print(f"RANK {rank} RAISED {type(err).__name__}: {err}", flush=True)
        if distributed:
            torch.distributed.barrier()  # both ranks report before torchrun stops the other
        sys.exit(3)
    mapped = mapped_file(store.embeddings.numpy().ctypes.data) == anchors_file
    print("STORE " + json.dumps({"rank": rank, "digest": store.digest(), "rows": len(store), "mapped": mapped}),
          flush=True)
    if distributed:
        torch.distributed.destroy_process_group()
    """
)


def worker_stores(output):
    """rank -> what the worker's ``load_or_extract`` store reported."""
    # the ranks share one pipe: a line of one may run into the other's, so match each record, not each line
    stores = [json.loads(record) for record in re.findall(r"STORE (\{[^}]*\})", output)]
    return {entry["rank"]: entry for entry in stores}


def test_sharded_extraction_keeps_each_row_once_with_its_own_anchor(tmp_path):
    """An odd number of rows on two ranks: the DistributedSampler pads rank 1 with a repeat of row 0.

    The shards go to rank 0 only (rank 1 gets no store back); ``load_or_extract`` then leaves
    every rank with the same file-mapped store as a single-process extraction.
    """
    num_rows = 7
    script = tmp_path / "extract_worker.py"
    script.write_text(EXTRACTION_WORKER)
    out = tmp_path / "anchors.pt"
    returncode, output = torchrun([str(script), str(num_rows), str(out)], cwd=tmp_path)
    assert returncode == 0, output[-5000:]
    assert "rank 1 embedded ['row01', 'row03', 'row05', 'row00']" in output  # the padding this test is about
    assert "rank 0 embedded ['row00', 'row02', 'row04', 'row06']; extract_anchors returned AnchorStore" in output
    assert "extract_anchors returned NoneType" in output.split("rank 1 embedded", 1)[1].splitlines()[0]
    store = AnchorStore.from_file(out)
    assert sorted(i.decode() for i in store.ids) == [f"row{i:02d}" for i in range(num_rows)]
    for i in range(num_rows):
        expected = torch.nn.functional.normalize(torch.tensor([[1.0, i + 1.0, 0, 0]]), dim=1)
        assert torch.allclose(store.lookup([f"row{i:02d}"]), expected)
    assert store.speakers == ["spk0", "spk1", "spk2"]
    assert store.lookup(["row04"], anchor_type="speaker").shape == (1, 4)

    single = subprocess.run([sys.executable, str(script), str(num_rows), str(tmp_path / "single.pt")], cwd=tmp_path,
                            env=worker_env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    (reference,) = worker_stores(single.stdout).values()
    ranks = worker_stores(output)
    assert sorted(ranks) == [0, 1] and reference["rows"] == num_rows
    for entry in ranks.values():  # every rank: the single-process store, read through the mapped file
        assert entry["digest"] == reference["digest"] == store.digest()
        assert entry["mapped"] and entry["rows"] == num_rows


def test_a_failed_write_on_rank_0_reaches_every_rank(tmp_path):
    """Rank 0 cannot write the store (here its folder's name is taken by a file; a full disk is alike):
    it raises its own OSError, and rank 1, waiting for the file, raises an AnchorStoreError naming the
    file and the cause, instead of waiting forever."""
    script = tmp_path / "extract_worker.py"
    script.write_text(EXTRACTION_WORKER)
    (tmp_path / "taken").write_text("a file where the anchors folder should be")
    anchors_file = tmp_path / "taken" / "anchors.pt"
    returncode, output = torchrun([str(script), "5", str(tmp_path / "unused.pt"), str(anchors_file)], cwd=tmp_path)
    assert returncode != 0
    # the ranks share one pipe: a rank's report can land on the end of the other's line, so it is read by pattern
    raised = dict(re.findall(r"RANK (\d+) (RAISED [^\n]*?)(?=RANK \d+ RAISED |\n|$)", output))
    assert sorted(raised) == ["0", "1"], output[-3000:]
    assert "RAISED FileExistsError" in raised["0"] or "RAISED NotADirectoryError" in raised["0"]
    assert f"RAISED AnchorStoreError: rank 0 could not write the anchors to {anchors_file}" in raised["1"]
    assert not anchors_file.exists()

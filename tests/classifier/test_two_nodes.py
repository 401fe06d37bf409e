"""Two torchrun "nodes" on 127.0.0.1 (--nnodes 2, c10d rendezvous, one process each), as the README's multi-node
command runs them: fine-tuning and the evaluate command give what one process gives."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_distributed import FINETUNE, _candidate_weights, _launch

pytestmark = pytest.mark.slow  # two launches of two nodes each


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_nodes(command: list[str], env: dict) -> None:
    """`command` (after the python executable) on two nodes of one process each, started together."""
    port = _free_port()
    nodes = []
    for rank in (0, 1):
        launcher = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"two-nodes-{port}",
                    "--rdzv_conf", f"is_host={1 if rank == 0 else 0}"]
        nodes.append(subprocess.Popen([sys.executable, *launcher, *command], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    outcomes = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outcomes):
        assert node.returncode == 0, stderr[-8000:]


def test_two_nodes_fine_tune_to_the_weights_of_one_process(tmp_path):
    _launch(FINETUNE, tmp_path, tmp_path / "one", 2, processes=1)  # two micro-batches: the two nodes' halves
    _two_nodes([str(tmp_path / "script.py"), str(tmp_path / "nodes"), "1"],
               {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    one, nodes = _candidate_weights(tmp_path / "one"), _candidate_weights(tmp_path / "nodes")
    assert one.keys() == nodes.keys()
    for name in one:
        assert torch.allclose(one[name].float(), nodes[name].float(), atol=1e-5, rtol=1e-4), name
    record = json.loads((tmp_path / "nodes" / "finetune.json").read_text())
    assert record["processes"] == 2


def test_the_evaluate_command_on_two_nodes_writes_what_one_process_writes(phantom_dataset, phantom_model, tmp_path):
    from cxr_audit.rundir import RunDir

    def command(out) -> list[str]:
        return ["-m", "cxr_audit.cli", "evaluate", "--out", str(out), "--data", str(phantom_dataset / "labels.csv"),
                "--model", str(phantom_model), "--spec", "coverage_specs/phantom.yaml", "--bootstrap", "100",
                "--mc-samples", "3", "--no-cache", "--workers", "0"]

    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CXR_AUDIT_CACHE": str(tmp_path)}
    single = subprocess.run([sys.executable, *command(tmp_path / "one")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-8000:]
    _two_nodes(command(tmp_path / "nodes"), env)
    metrics = [json.loads(RunDir(tmp_path / run).evaluation("baseline").metrics.read_text()) for run in ("one", "nodes")]
    assert metrics[0] == metrics[1]
    assert np.array_equal(*(np.load(RunDir(tmp_path / run).evaluation("baseline").predictions)["probabilities"]
                            for run in ("one", "nodes")))

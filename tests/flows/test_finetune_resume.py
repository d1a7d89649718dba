"""One fine-tuning path: a ``finetune`` flow run SIGKILLed right after it wrote a checkpoint resumes from that
checkpoint when it is run again, as ``desra finetune`` does, and both find the same folder: the CLI run with the
same options afterwards trains nothing again.

The kill is injected, not timed: the flow runs in a child process whose checkpoint writer kills the process
(SIGKILL) the moment the first checkpoint is on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from prefect.settings import get_current_settings

import desra_core.finetune.data
from desra.cli import main
from desra.flows.finetune import finetune
from tests.conftest import REPO
from tests.flows.conftest import finetune_job

# In the child: the checkpoint is written whole (atomically), then the process dies at once.
_KILLED_AFTER_FIRST_CHECKPOINT = """
import json, os, signal, sys
import desra_core.finetune.trainer as trainer
real_save = trainer._save_atomic
def save_then_die(obj, path):
    real_save(obj, path)
    os.kill(os.getpid(), signal.SIGKILL)
trainer._save_atomic = save_then_die
from desra.flows.finetune import finetune
finetune(**json.loads(sys.argv[1]))
"""

TRAINING = dict(iterations=4, batch=2, crop=64, lr=1e-2, checkpoint_every=2, validate_every=2, min_detail_ratio=0.0,
                min_artifact_images=1)


@pytest.fixture
def job(tmp_path):
    """Three small images; a textured tiny Compact as the GAN model, its smooth twin (residual branch zeroed)
    as the MSE model, so that detection finds texture to remove."""
    images, mse, gan = finetune_job(tmp_path)
    return dict(input_dir=str(images), output_dir=str(tmp_path / "out"), mse_model=str(mse), gan_model=str(gan),
                segmenter=None, threshold=0.9, min_area=10, device="cpu", **TRAINING)


@pytest.fixture
def sampled(monkeypatch):
    """How many training batches are drawn in this process (one per training step)."""
    calls = []
    real = desra_core.finetune.data.PairSampler.sample

    def sample(self, batch):
        calls.append(batch)
        return real(self, batch)

    monkeypatch.setattr(desra_core.finetune.data.PairSampler, "sample", sample)
    return calls


def test_a_killed_flow_run_resumes_from_its_checkpoint_and_the_cli_finds_the_same_run(tmp_path, job, sampled,
                                                                                      capsys):
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}  # the session's test API
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.run([sys.executable, "-c", _KILLED_AFTER_FIRST_CHECKPOINT, json.dumps(job)], cwd=REPO,
                               env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    output = (tmp_path / "child.log").read_text()
    assert child.returncode == -signal.SIGKILL, output
    (folder,) = [p for p in (tmp_path / "out" / "finetune").iterdir() if p.name != "validation"]
    checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 2 and [r["step"] for r in checkpoint["log"]] == [1, 2]
    assert not (folder / "model_card.json").exists() and not (folder / "train_log.parquet").exists()  # died first

    result = finetune(**job)  # the flow again, in this process: it resumes at step 2
    assert result["folder"] == str(folder)
    assert len(sampled) == 2, "the resumed run trained steps 1-2 again instead of resuming"
    log = pd.read_parquet(folder / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3, 4]
    for before, after in zip(checkpoint["log"], log.to_dict("records")[:2], strict=True):
        assert before["l1"] == after["l1"] and before["seconds"] == after["seconds"]  # read back, not trained again
    card = json.loads((folder / "model_card.json").read_text())
    assert [c["step"] for c in card["checkpoints"]] == [2, 4]

    sampled.clear()
    rc = main(["finetune", "--gan", job["gan_model"], "--mse", job["mse_model"], "--images", job["input_dir"],
               "--no-semantic", "--out", job["output_dir"], "--threshold", "0.9", "--min-area", "10", "--device", "cpu",
               "--iterations", "4", "--batch", "2", "--crop", "64", "--lr", "1e-2", "--checkpoint-every", "2",
               "--validate-every", "2", "--min-detail-ratio", "0", "--min-artifact-images", "1"])
    out = capsys.readouterr().out
    assert f"fine-tuning folder: {folder}" in out and sampled == []  # the flow's run, finished: nothing to train
    assert rc == (0 if result["generator"] else 3)
    again = json.loads((folder / "model_card.json").read_text())
    assert again["chosen"] == card["chosen"] and again["checkpoints"] == card["checkpoints"]

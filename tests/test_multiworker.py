"""Two worker processes on loopback ports (TF_CONFIG) analyze like one process does."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_erranalysis.cli import main as cli_main
from keras_erranalysis.run._reader import load_run

pytestmark = pytest.mark.slow

N = 67  # chunks of 32, 32 and 3: the last global batch leaves one worker nearly idle
TIMEOUT = 420  # seconds for the whole cluster (about 30 s on 2 idle cores, 200 s when busy)


def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _saved_model_and_data(folder):
    import keras

    rng = np.random.RandomState(0)
    tokens = rng.randint(1, 40, (N, 6)).astype("int32")
    tokens[rng.rand(N, 6) < 0.2] = 0  # padding, masked
    labels = (tokens[:, 0] % 3).astype("int64")
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(40, 8, mask_zero=True)(inp)
    attended = keras.layers.MultiHeadAttention(2, 4, name="mha")(embedded, embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    model = keras.Model(inp, keras.layers.Dense(3)(pooled))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(tokens, labels, epochs=1, batch_size=16, verbose=0)
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", tokens=tokens, label=labels)
    return model, tokens, labels


def test_two_loopback_workers_equal_one_process_and_only_the_chief_writes(tmp_path):
    from keras_erranalysis.compute._attention import attention_diagnostics

    model, tokens, labels = _saved_model_and_data(tmp_path)
    direct = attention_diagnostics(model, (tokens, labels), batch_size=16).diagnostics
    options = ["--chunk-size", "32", "--batch-size", "16", "--attention", "--jit", "off", "-q"]
    single = cli_main(
        [
            "analyze",
            str(tmp_path / "model.keras"),
            str(tmp_path / "data.npz"),
            "-o",
            str(tmp_path / "single"),
            *options,
        ]
    )
    assert single == 0

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    try:
        for index in range(2):
            workdir = tmp_path / f"cwd{index}"
            workdir.mkdir()
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
            command = [
                sys.executable,
                "-m",
                "keras_erranalysis.cli",
                "analyze",
                str(tmp_path / "model.keras"),
                str(tmp_path / "data.npz"),
                "-o",
                str(tmp_path / f"run{index}"),
                *options,
            ]
            workers.append(
                subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        outputs = [worker.communicate(timeout=TIMEOUT) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)

    for worker, (_out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-2000:]
    assert "on 2 worker(s): epoch 1 written" in outputs[0][0]
    assert "the chief writes the results" in outputs[1][0]

    # the chief's run equals the single-process run, example by example
    chief = load_run(tmp_path / "run0", verify=True)
    reference = load_run(tmp_path / "single")
    assert chief.meta()["info"]["num_workers"] == 2
    got, want = chief.report(), reference.report()
    np.testing.assert_array_equal(got.example_id, np.arange(N))
    np.testing.assert_array_equal(got.example_id, want.example_id)
    np.testing.assert_allclose(got.loss, want.loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.margin, want.margin, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.prediction, want.prediction)
    np.testing.assert_array_equal(got.label, want.label)
    np.testing.assert_array_equal(got.inputs["input"], want.inputs["input"])
    # attention diagnostics too, in example order, equal to a direct in-memory call
    assert sorted(got.extra) == sorted(direct) == sorted(want.extra)
    assert "attn_entropy/mha" in direct
    for name, values in direct.items():
        np.testing.assert_allclose(want.extra[name], values, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.extra[name], values, atol=1e-6, rtol=0)
    assert (
        chief.table("hardest")["example_id"].tolist()
        == reference.table("hardest")["example_id"].tolist()
    )
    assert sorted(p.name for p in (tmp_path / "run0").iterdir()) == ["epoch_0001", "run.json"]

    # the other worker wrote nothing: no run folder, nothing in its working directory
    assert not (tmp_path / "run1").exists()
    assert list((tmp_path / "cwd1").iterdir()) == []

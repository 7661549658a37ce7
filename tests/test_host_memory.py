"""keep_host_memory: what it does to CPU train steps (page faults), where it applies (CPU-only runs
by default), and that it is never silently ignored."""

import json
import subprocess
import sys

import pytest

from cpt_jax import host_memory
from cpt_jax.errors import UserError

# A 1-layer model whose step temporaries (about 60 MB, mostly logits) are above glibc's 32 MB mmap
# threshold, as every real model's are. The child counts minor page faults between consecutive
# steps' starts (the loop waits for each step, so that is one step).
CHILD = """
import json, resource, sys
from cpt_jax.train import loop
from cpt_jax.train.config import load_run_config
marks = []
place = loop.to_global_batch
def marked(*a, **k):
    marks.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    return place(*a, **k)
loop.to_global_batch = marked
if sys.argv[1] == "cli":
    from cpt_jax.cli.main import main
    assert main(["train", sys.argv[2], "--no-progress"]) == 0
else:
    loop.train(load_run_config(sys.argv[2]), progress=False)
print(json.dumps([b - a for a, b in zip(marks[2:], marks[3:])]))
"""


def plan(tmp_path, keep) -> str:
    plan = {"run_dir": str(tmp_path / f"run-{keep}"), "keep_host_memory": keep,
            "model": {"vocab_size": 8192, "hidden_size": 64, "intermediate_size": 128, "num_layers": 1,
                      "num_heads": 2, "max_position_embeddings": 128},
            "data": {"seq_len": 128, "global_batch_size": 8, "sources": {"a": {"kind": "synthetic"}}},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
            "checkpoint": {"every": 100}, "eval": {"every": 100, "batches": 1},
            "log": {"every": 1, "tensorboard": False, "progress": False},
            "phases": [{"name": "p", "init": "scratch", "steps": 5, "mixture": {"a": 1.0},
                        "schedule": {"peak_lr": 1e-3, "warmup_steps": 1}}]}
    path = tmp_path / f"plan-{keep}.json"
    path.write_text(json.dumps(plan))
    return str(path)


def faults_per_step(path: str, plan_path: str) -> tuple[int, str]:
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-c", CHILD, path, plan_path], capture_output=True, text=True,
                         env={**__import__("os").environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return min(json.loads(out.stdout.splitlines()[-1])), out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not host_memory.is_glibc(), reason="the setting is glibc's malloc")
def test_cpu_steps_reuse_freed_memory(tmp_path):
    """null (the default) on a CPU-only run keeps freed memory: no page faults per step, logged;
    false gives glibc's defaults back: each step faults its temporaries in afresh. One run through
    `cpt-jax train`, one through the library's train(): both honour the key."""
    faults, log = faults_per_step("cli", plan(tmp_path, None))
    assert "host memory: freed memory is kept" in log and "JAX_PLATFORMS=cpu" in log
    assert faults < 200, faults
    faults, log = faults_per_step("library", plan(tmp_path, False))
    assert "host memory: keep_host_memory: false" in log
    assert faults > 5_000, faults  # > 20 MB of fresh 4 KiB pages every step


@pytest.fixture
def fresh(monkeypatch):
    """host_memory as in a process where JAX has not started; mallopt is not really called."""
    monkeypatch.setattr(host_memory, "_applied", {})
    monkeypatch.setattr(host_memory, "backends_started", lambda: False)
    calls = []
    monkeypatch.setattr(host_memory, "set_malloc_options", lambda s: calls.append(s) or True)
    return calls


def test_auto_is_off_where_an_accelerator_may_run(fresh, monkeypatch, capsys):
    monkeypatch.setattr(host_memory, "cpu_only", lambda: (False, "accelerator plugins installed: xla_cuda12"))
    assert host_memory.apply(None) is False and not fresh
    assert "not a CPU-only run (accelerator plugins installed: xla_cuda12" in capsys.readouterr().err


@pytest.mark.parametrize("platforms, plugins, cpu", [("cpu", ["xla_cuda12"], True), ("cuda,cpu", [], False),
                                                     ("", ["xla_cuda12"], False), ("", [], True)])
def test_backend_is_judged_before_jax_starts(monkeypatch, platforms, plugins, cpu):
    monkeypatch.setattr(host_memory, "configured_platforms", lambda: [p for p in platforms.split(",") if p])
    monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: plugins)
    assert host_memory.cpu_only()[0] is cpu


def test_asked_for_and_impossible_is_an_error(fresh, monkeypatch):
    monkeypatch.setattr(host_memory, "is_glibc", lambda: False)
    with pytest.raises(UserError, match="needs glibc"):
        host_memory.apply(True)
    monkeypatch.setattr(host_memory, "is_glibc", lambda: True)
    monkeypatch.setattr(host_memory, "set_malloc_options", lambda s: False)
    with pytest.raises(UserError, match="refused"):
        host_memory.apply(True)
    monkeypatch.setattr(host_memory, "backends_started", lambda: True)
    with pytest.raises(UserError, match="before JAX starts"):
        host_memory.apply(True)


def test_library_train_refuses_what_it_cannot_apply(tmp_path):
    """In a process where JAX already runs (this one), train() with keep_host_memory: true is an
    error before anything is written, not a setting silently ignored."""
    import jax

    from cpt_jax.train.config import load_run_config
    from cpt_jax.train.loop import train

    jax.devices()
    cfg = load_run_config(plan(tmp_path, True))
    with pytest.raises(UserError, match="keep_host_memory: true"):
        train(cfg, progress=False)
    assert not (tmp_path / "run-True").exists()

"""profile: {start_step, steps}: a jax.profiler trace of those steps in the run directory."""

import gzip
import json
import time
from pathlib import Path

import pytest
import yaml
from plan_fixtures import tiny_plan

from cpt_jax.cli.main import main
from cpt_jax.config.base import from_dict
from cpt_jax.errors import ConfigError
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer

PHASES = [{"name": "p", "init": "scratch", "steps": 4, "mixture": {"a": 1.0},
           "schedule": {"peak_lr": 1e-3, "warmup_steps": 1}}]


def write_plan(tmp_path, profile: dict) -> tuple[str, dict]:
    plan = {"run_dir": str(tmp_path / "run"), **tiny_plan(PHASES, checkpoint_every=1), "profile": profile}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path), plan


@pytest.mark.slow  # 40 s on 2 cores; the trace itself is also written by the bucket test below
def test_cli_run_writes_a_trace_of_the_chosen_steps(tmp_path, capsys):
    plan, _ = write_plan(tmp_path, {"start_step": 1, "steps": 2})
    assert main(["train", plan, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "profile: tracing steps 2-3" in err and "wrote the trace of steps 2-3" in err
    folder = tmp_path / "run" / "profile" / "process-0"
    [xplane] = folder.glob("plugins/profile/*/*.xplane.pb")  # what TensorBoard's profile plugin reads
    assert xplane.stat().st_size > 0
    [perfetto] = folder.glob("plugins/profile/*/perfetto_trace.json.gz")  # what Perfetto opens
    events = json.loads(gzip.decompress(perfetto.read_bytes()))
    assert events["traceEvents"]


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_a_resume_past_start_step_is_not_traced(tmp_path, capsys):
    plan, raw = write_plan(tmp_path, {"start_step": 1, "steps": 1})
    Trainer(from_dict(RunConfig, {**raw, "profile": {}}), progress=False, stop_after=2).run()  # "crashed" at 2
    assert main(["train", plan, "--no-progress"]) == 0  # resumes at step 2, past start_step
    assert "profile: not traced, this run resumed at step 2" in capsys.readouterr().err
    assert not (tmp_path / "run" / "profile").exists()


@pytest.mark.parametrize("profile, key", [({"start_step": 0, "steps": 2}, "profile.start_step"),
                                          ({"steps": -1}, "profile.steps"),
                                          ({"start_step": -2}, "profile.start_step"),
                                          ({"steps": 1, "start_step": 1, "processes": "some"}, "profile.processes")])
def test_bad_profile_settings_name_the_key(tmp_path, profile, key):
    _, raw = write_plan(tmp_path, profile)
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, raw)
    assert err.value.key == key


def test_a_bucket_run_dir_gets_the_trace_uploaded(tmp_path, monkeypatch):
    """jax.profiler writes only local files: with a gs:// run_dir the trace goes through a local
    folder and lands under RUN/profile/process-0 in the bucket (an earlier trace stays)."""
    import fsspec
    import jax.numpy as jnp
    from emulators import Emulator

    from cpt_jax.storage.paths import as_path
    from cpt_jax.train.hooks import StepInfo
    from cpt_jax.train.profile import ProfileConfig, StepProfiler

    with Emulator("gs") as em:
        em.make_bucket("bkt")
        for k, v in em.env().items():
            monkeypatch.setenv(k, v)
        traces = []
        for attempt in range(2):
            time.sleep(attempt * 1.1)  # jax.profiler names each trace's folder by the second
            lines = []
            prof = StepProfiler(ProfileConfig(start_step=1, steps=1), "gs://bkt/run", 0, lines.append)
            info = StepInfo(step=1, phase=0, phase_step=1, phase_end=False, stopping=False)
            assert prof.start_due(info)
            prof.start(info)
            x = jnp.ones((64, 64)) @ jnp.ones((64, 64))
            prof.stop(StepInfo(step=2, phase=0, phase_step=2, phase_end=True, stopping=False), x)
            assert "gs://bkt/run/profile/process-0" in lines[-1]
            fs, root = fsspec.core.url_to_fs(str(as_path("gs://bkt/run/profile/process-0")))
            traces = sorted(fs.glob(f"{root}/plugins/profile/*/*.xplane.pb"))
            assert len(traces) == attempt + 1 and fs.size(traces[-1]) > 0
        assert not list(tmp_path.glob("gs:*")) and not (Path.cwd() / "gs:").exists()

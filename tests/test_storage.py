"""Runs and data in object storage, against emulators on 127.0.0.1 that each test starts and
stops (tests/emulators.py): GCS (gcp-storage-emulator) for run_dir, checkpoints and data; S3
(moto server) for prepared data read through the local cache. All through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from emulators import Emulator, upload

REPO = Path(__file__).resolve().parents[1]
PHASES = [
    {"name": "open", "init": "scratch", "steps": 6, "mixture": {"text": 1.0},
     "schedule": {"shape": "infinite", "peak_lr": 3e-3, "warmup_steps": 2, "cooldown_steps": 0, "constant_lr": 3e-3}},
    {"name": "anneal", "steps": 6, "mixture": {"text": 1.0},
     "schedule": {"shape": "linear", "peak_lr": 3e-3, "min_lr": 3e-4}},
]


def plan(run_dir: str, data: str, tok: Path) -> dict:
    return {
        "run_dir": run_dir, "tokenizer": str(tok),
        "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                  "num_kv_heads": 1, "max_position_embeddings": 16},
        "data": {"seq_len": 16, "global_batch_size": 8, "sources": {"text": {"path": data}}},
        "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
        "checkpoint": {"every": 3, "keep_last": 20, "async_save": True},
        "eval": {"every": 100, "batches": 1},
        "log": {"every": 1, "tensorboard": True},
        "phases": PHASES,
    }


def cli_env(em: Emulator | None, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **(em.env() if em else {}), "PYTHONPATH": str(REPO), "CPT_JAX_CACHE_DIR": str(tmp_path / "cache"),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def cli(env, cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cpt_jax", *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """A prepared source (local) and its tokenizer."""
    from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

    words = vocabulary("w", 60)
    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", words)
    write_jsonl(tmp_path / "in" / "text.jsonl", documents(words, 200, seed=3, max_words=80))
    out = cli(cli_env(None, tmp_path), tmp_path, "prepare", tmp_path / "in", "--out", tmp_path / "data",
              "--tokenizer", tok, "--eval-docs", "8", "--quiet").communicate()[0]
    assert (tmp_path / "data" / "manifest.json").is_file(), out
    return tmp_path / "data", tok


def object_bytes(em: Emulator, bucket: str, name: str) -> bytes | None:
    """An object's bytes (None: no such object), read through the emulator's API."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{em.url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
    try:
        return urllib.request.urlopen(url, timeout=10).read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def remote_rows(em: Emulator, url: str) -> dict[int, dict]:
    """The train rows of a metrics.jsonl in the bucket, read through the emulator's API: not
    through this process's gcsfs, which keeps the endpoint of the first test that used it."""
    bucket, _, name = url.removeprefix("gs://").partition("/")
    rows = [json.loads(line) for line in (object_bytes(em, bucket, name) or b"").decode().splitlines() if line]
    return {r["step"]: r for r in rows if r["kind"] == "train"}


@pytest.mark.slow
def test_gs_plan_killed_resumes_bit_identically_then_exports_evals_reports(tmp_path, monkeypatch):
    """A two-phase plan whose run_dir and prepared data are in a GCS bucket: kill -9 inside the
    second phase, resume: the steps trained again are bit for bit the ones trained before the
    kill. Then export-hf, eval and report read the bucket and write into it."""
    data, tok = prepared(tmp_path)
    with Emulator("gs", data_dir=tmp_path / "gcs") as em:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        upload(data, "gs://bkt/data", em.env())
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan("gs://bkt/run", "gs://bkt/data", tok)))
        metrics = "gs://bkt/run/metrics.jsonl"
        proc = cli(env, tmp_path, "train", "plan.yaml", "--no-progress")
        deadline, rows = time.time() + 400, {}
        while max(rows, default=0) < 8 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            rows = remote_rows(em, metrics)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # inside phase 'anneal', after its checkpoint at step 6
        proc.wait()
        before_kill = remote_rows(em, metrics)
        out = cli(env, tmp_path, "train", "plan.yaml", "--no-progress").communicate()[0]
        rows = remote_rows(em, metrics)
        assert sorted(rows) == list(range(1, 13)), out[-3000:]
        assert max(before_kill) >= 8 and all(rows[s]["loss"] == r["loss"] and rows[s]["lr"] == r["lr"]
                                              for s, r in before_kill.items())
        # Export, eval and report: read from the bucket, written into it.
        out = cli(env, tmp_path, "export-hf", "gs://bkt/run", "gs://bkt/hf").communicate()[0]
        out += cli(env, tmp_path, "eval", "gs://bkt/run", "--json", "gs://bkt/eval.json").communicate()[0]
        out += cli(env, tmp_path, "report", "gs://bkt/run").communicate()[0]
        from cpt_jax.storage import as_path
        from cpt_jax.train.metrics import read_jsonl

        for k, v in em.env().items():  # this process reads the bucket too (the only test that does)
            monkeypatch.setenv(k, v)
        bucket = as_path("gs://bkt")
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (bucket / "hf").iterdir()}, \
            out[-3000:]
        final = [r for r in read_jsonl(metrics) if r["kind"] == "eval" and r["step"] == 12
                 and r.get("weights", "raw") == "raw"][0]
        evaluated = json.loads((bucket / "eval.json").read_text())["heldout"]["text"]["loss"]
        assert abs(evaluated - final["loss"]) < 1e-5
        assert {"heldout.md", "curves-run.png"} <= {p.name for p in (bucket / "run" / "report").iterdir()}, out[-3000:]
        assert any((bucket / "run" / "tensorboard").iterdir()), "TensorBoard events in the bucket"


def short_plan(run_dir: str, data: str, tok: Path) -> dict:
    p = plan(run_dir, data, tok)
    p["phases"] = [dict(PHASES[0], steps=2)]
    p["checkpoint"] = {"every": 2, "async_save": False}
    p["log"] = {"every": 1, "tensorboard": False}
    return p


def one_error(proc: subprocess.Popen) -> str:
    out = proc.communicate()[0]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    return errors[0]


@pytest.mark.slow
def test_s3_data_is_read_through_the_local_cache_bit_identically(tmp_path):
    """A prepared source on s3:// (moto): copied to the local cache, and the run's losses are
    the ones the same source gives from local disk. run_dir on s3:// is refused by name.
    prepare --out and import-hf (in and out) work on s3:// too."""
    data, tok = prepared(tmp_path)
    with Emulator("s3") as em:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        upload(data, "s3://bkt/data", em.env())
        (tmp_path / "s3.yaml").write_text(yaml.safe_dump(short_plan(str(tmp_path / "a"), "s3://bkt/data", tok)))
        (tmp_path / "local.yaml").write_text(yaml.safe_dump(short_plan(str(tmp_path / "b"), str(data), tok)))
        out = cli(env, tmp_path, "train", "s3.yaml", "--no-progress").communicate()[0]
        out += cli(env, tmp_path, "train", "local.yaml", "--no-progress").communicate()[0]
        from cpt_jax.train.metrics import read_jsonl

        losses = [[r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if r["kind"] == "train"]
                  for run in ("a", "b")]
        assert len(losses[0]) == 2 and losses[0] == losses[1], out[-3000:]
        assert sorted(p.name for p in (tmp_path / "cache").rglob("*.arrayrecord")) == \
               sorted(p.name for p in data.glob("*.arrayrecord"))
        (tmp_path / "s3run.yaml").write_text(yaml.safe_dump(short_plan("s3://bkt/run", "s3://bkt/data", tok)))
        assert "cannot be written to s3://" in one_error(cli(env, tmp_path, "train", "s3run.yaml", "--no-progress"))

        # prepare --out s3:// writes the shards a local prepare writes; import-hf reads an HF
        # folder on s3:// and writes its checkpoint there
        from hf_fixtures import make_tiny_hf_model

        upload(make_tiny_hf_model(tmp_path / "hf", "llama"), "s3://bkt/hf", em.env())
        for args in (["prepare", tmp_path / "in", "--out", "s3://bkt/prep", "--tokenizer", tok, "--eval-docs", "8",
                      "--quiet"], ["import-hf", "s3://bkt/hf", "s3://bkt/ckpt"]):
            proc = cli(env, tmp_path, *args)
            out = proc.communicate()[0]
            assert proc.returncode == 0, out[-3000:]
        prep = download(em, "s3://bkt/prep", tmp_path / "prep")
        assert {p.name: p.read_bytes() for p in prep.glob("*.arrayrecord")} == \
               {p.name: p.read_bytes() for p in data.glob("*.arrayrecord")}
        ckpt = download(em, "s3://bkt/ckpt", tmp_path / "ckpt")
        assert (ckpt / "tokenizer" / "tokenizer.json").is_file() and (ckpt / "0" / "params").is_dir()


def synthetic_plan(run_dir: str, tmp_path: Path) -> Path:
    """A short plan on synthetic data (no files to prepare), written to tmp_path/plan.yaml."""
    p = short_plan(run_dir, str(tmp_path / "data"), tmp_path / "tok.json")
    p["data"]["sources"] = {"a": {"kind": "synthetic", "num_docs": 8, "eval_docs": 2}}
    p["phases"][0]["mixture"] = {"a": 1.0}
    del p["tokenizer"]
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(p))
    return tmp_path / "plan.yaml"


def test_missing_bucket_is_one_error_and_writes_nothing(tmp_path):
    """A run_dir in a bucket that does not exist: one `error:` line naming the bucket, exit 2."""
    with Emulator("gs") as em:
        env = cli_env(em, tmp_path)
        synthetic_plan("gs://missing/run", tmp_path)
        line = one_error(cli(env, tmp_path, "train", "plan.yaml", "--no-progress"))
        assert "gs://missing" in line and "does not exist" in line, line


@pytest.mark.slow  # the client retries the refused connection for about a minute
def test_unreachable_endpoint_is_one_error(tmp_path):
    """CPT_JAX_GCS_ENDPOINT pointing at nothing (a closed port): one `error:` line that names the
    bucket and the endpoint variable, exit 2, not the client library's traceback."""
    from emulators import free_port

    env = {**cli_env(None, tmp_path), "CPT_JAX_GCS_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    synthetic_plan("gs://bkt/run", tmp_path)
    line = one_error(cli(env, tmp_path, "train", "plan.yaml", "--no-progress"))
    assert "gs://bkt" in line and "cannot be reached" in line and "CPT_JAX_GCS_ENDPOINT" in line, line


def test_task_and_data_tokenizers_read_from_a_bucket(tmp_path, monkeypatch):
    """A tokenizer in a bucket (a file URL, or for tasks its folder) encodes as its local copy
    does; only the tokenizer files are fetched, not the weights beside them; the URL is recorded."""
    from hf_fixtures import make_tiny_hf_model

    from cpt_jax.data.tokenizer import TokenizerSpec, load_tokenizer
    from cpt_jax.tasks.tokenizer import load_task_tokenizer

    hf = make_tiny_hf_model(tmp_path / "hf", "llama")
    monkeypatch.setenv("CPT_JAX_CACHE_DIR", str(tmp_path / "cache"))
    text = "w3 w5 w7 w11"
    with Emulator("gs") as em:
        em.make_bucket("bkt")
        upload(hf, "gs://bkt/hf", em.env())
        for k, v in em.env().items():
            monkeypatch.setenv(k, v)
        remote = load_tokenizer(TokenizerSpec("gs://bkt/hf/tokenizer.json"))
        local = load_tokenizer(TokenizerSpec(str(hf / "tokenizer.json")))
        assert remote.encode_batch([text]) == local.encode_batch([text])
        assert remote.describe()["path"] == "gs://bkt/hf/tokenizer.json"
        assert remote.fingerprint == local.fingerprint and remote.add_bos == local.add_bos
        for url in ("gs://bkt/hf", "gs://bkt/hf/tokenizer.json"):
            assert load_task_tokenizer(url).encode(text) == load_task_tokenizer(hf).encode(text)
    fetched = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_symlink()}
    assert fetched == {"tokenizer.json", "tokenizer_config.json"}, fetched  # no weights


def bucket_objects(em: Emulator, bucket: str) -> list[str]:
    """The names of the objects in a bucket, listed through the emulator's API."""
    import urllib.request

    listing = json.loads(urllib.request.urlopen(f"{em.url}/storage/v1/b/{bucket}/o", timeout=10).read())
    return [item["name"] for item in listing.get("items") or []]


def test_no_write_permission_is_one_error_and_writes_nothing(tmp_path):
    """Where the credentials may not write (the emulator answers 403 under bkt/ro/, as GCS does),
    train and prepare each stop with one `error:` line that says so, exit 2, and write nothing."""
    from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

    words = vocabulary("w", 20)
    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", words)
    write_jsonl(tmp_path / "in" / "text.jsonl", documents(words, 20, seed=1))
    with Emulator("gs", deny_writes="bkt/ro/") as em:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        synthetic_plan("gs://bkt/ro/run", tmp_path)
        for args in (["train", "plan.yaml", "--no-progress"],
                     ["prepare", tmp_path / "in", "--out", "gs://bkt/ro/data", "--tokenizer", tok, "--quiet"]):
            line = one_error(cli(env, tmp_path, *args))
            assert "no permission to write to gs://bkt" in line, line
        assert bucket_objects(em, "bkt") == []
        assert not (tmp_path / "cache" / "prepare").exists() or not any((tmp_path / "cache" / "prepare").iterdir())


TENSORSTORE_REREAD = """
import sys, tensorstore as ts
kv = ts.KvStore.open({"driver": "gcs", "bucket": "bkt"}).result()
held = kv.write("manifest", b"one").result().generation
again = kv.read("manifest", if_not_equal=held).result()  # GCS: 304, "unchanged since `held`"
assert again.state == "unspecified" and again.stamp.generation == held, (again.state, again.stamp.generation)
new = kv.write("manifest", b"two", if_equal=held).result().generation  # OCDBT's manifest update
stale = kv.write("manifest", b"three", if_equal=held).result().generation  # b"": condition not met
assert new not in (b"", held) and stale == b"" and kv.read("manifest").result().value == b"two"
"""


def test_gcs_emulator_keeps_the_generation_preconditions_tensorstore_relies_on(tmp_path):
    """The GCS emulator the tests start (tests/gcs_emulator.py) answers conditional reads and
    writes as GCS does: tensorstore re-reads an object with ifGenerationNotMatch and writes
    OCDBT's manifest with ifGenerationMatch (the bare emulator made that write fail with
    "Malformed StorageGeneration"); uploads and deletes on a stale generation are refused."""
    import urllib.error
    import urllib.request

    with Emulator("gs") as em:
        em.make_bucket("bkt")
        env = {**os.environ, "TENSORSTORE_GCS_HTTP_URL": em.url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}
        done = subprocess.run([sys.executable, "-c", TENSORSTORE_REREAD], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

        def status(method: str, path: str, data: bytes | None = None) -> int:
            try:
                return urllib.request.urlopen(urllib.request.Request(em.url + path, data, method=method)).status
            except urllib.error.HTTPError as e:
                return e.code

        upload = "/upload/storage/v1/b/bkt/o?name=manifest&"
        assert status("POST", upload + "uploadType=media&ifGenerationMatch=0", b"x") == 412  # exists
        assert status("POST", upload + "uploadType=resumable&ifGenerationMatch=1", b"{}") == 412
        assert status("DELETE", "/storage/v1/b/bkt/o/manifest?ifGenerationMatch=1") == 412
        assert status("DELETE", "/storage/v1/b/bkt/o/manifest") in (200, 204)
        assert status("POST", upload + "uploadType=media&ifGenerationMatch=0", b"x") == 200  # now absent


def test_an_error_line_keeps_the_cause_tensorstore_names_last():
    """A failed save is reported with tensorstore's message, whose cause comes last after nested
    contexts and before a spec dump of kilobytes: the dump goes, the cause stays."""
    from cpt_jax.errors import brief

    where = "gs://bkt/run/checkpoints/6/opt_state/ocdbt.process_0/"
    error = ValueError(f'Error opening "zarr" driver: Error writing "1.mu.embed/.zarray" in OCDBT database at {where}: '
                       f"Error writing {where}manifest.ocdbt: Malformed StorageGeneration "
                       f"[tensorstore_spec='{json.dumps({'context': {'cache_pool': {}}, 'pad': 'x' * 3000})}']")
    line = brief(error)
    assert line.startswith("ValueError: Error opening") and line.endswith("manifest.ocdbt: Malformed StorageGeneration")
    assert "tensorstore_spec" not in line and len(brief(ValueError("y" * 5000))) < 450


def download(em: Emulator, url: str, local: Path) -> Path:
    """Copy a folder out of the bucket (in a fresh process that has the endpoint)."""
    code = ("import sys; from cpt_jax.storage import local_folder; import shutil; "
            "shutil.copytree(local_folder(sys.argv[1]), sys.argv[2], symlinks=False)")
    subprocess.run([sys.executable, "-c", code, url, str(local)], env={**os.environ, **em.env(), "PYTHONPATH": str(REPO),
                   "CPT_JAX_CACHE_DIR": str(local.parent / "dl-cache")}, check=True)
    return local


@pytest.mark.slow
def test_prepare_import_merge_extend_and_hf_init_read_and_write_a_bucket(tmp_path):
    """Every command that takes a model or data folder takes one in a bucket, from the CLI:
    prepare --out and --tokenizer, a plan's tokenizer, import-hf in and out, merge inputs (an HF folder and ckpt:) and output,
    extend-vocab's model, tokenizer and output, and a plan's `init: hf:gs://...`. The merge of a
    model with its own import (weights 0.5, 0.5) gives back its tensors bit for bit."""
    from hf_fixtures import make_tiny_hf_model
    from test_merge import read_hf_tensors
    from text_fixtures import documents, write_jsonl
    from tokenizers import Tokenizer

    hf = make_tiny_hf_model(tmp_path / "hf", "llama")
    write_jsonl(tmp_path / "in" / "text.jsonl", documents([f"w{i}" for i in range(3, 160)], 60, seed=1))
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    tok.add_tokens(["w5 w9"])
    (tmp_path / "newtok").mkdir()
    tok.save(str(tmp_path / "newtok" / "tokenizer.json"))
    with Emulator("gs") as em:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        upload(hf, "gs://bkt/hf", em.env())
        upload(tmp_path / "newtok", "gs://bkt/newtok", em.env())

        def run(*args) -> str:
            proc = cli(env, tmp_path, *args)
            out = proc.communicate()[0]
            assert proc.returncode == 0, out[-3000:]
            return out

        run("prepare", tmp_path / "in", "--out", "gs://bkt/data", "--tokenizer", "gs://bkt/hf/tokenizer.json",
            "--eval-docs", "4", "--quiet")  # the tokenizer read from beside the weights, which stay in the bucket
        line = one_error(cli(env, tmp_path, "prepare", tmp_path / "in", "--out", "gs://bkt/data", "--tokenizer",
                             hf / "tokenizer.json", "--eval-docs", "4", "--quiet"))
        assert "is not empty" in line and "--overwrite" in line, line
        run("import-hf", "gs://bkt/hf", "gs://bkt/ckpt")
        (tmp_path / "avg.yaml").write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": [
            {"model": "gs://bkt/hf", "parameters": {"weight": 0.5}},
            {"model": "ckpt:gs://bkt/ckpt", "parameters": {"weight": 0.5}}]}))
        run("merge", "avg.yaml", "--out", "gs://bkt/merged")
        out = run("extend-vocab", "gs://bkt/ckpt", "--tokenizer", "gs://bkt/newtok/tokenizer.json",
                  "--out", "gs://bkt/ext", "--pad-multiple", "8")
        assert "160 -> 161 tokens" in out, out[-3000:]
        p = short_plan(str(tmp_path / "run"), "gs://bkt/data", "gs://bkt/hf/tokenizer.json")
        p["phases"][0]["init"] = "hf:gs://bkt/hf"
        del p["model"]  # taken from the folder's config.json in the bucket
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(p))
        run("train", "plan.yaml", "--no-progress")

        merged = read_hf_tensors(download(em, "gs://bkt/merged", tmp_path / "merged"))
        original = read_hf_tensors(hf)
        assert sorted(merged) == sorted(original) and all(np.array_equal(merged[k], original[k]) for k in original)
        ext = download(em, "gs://bkt/ext", tmp_path / "ext")
        assert (ext / "tokenizer" / "tokenizer.json").read_bytes() == (tmp_path / "newtok" / "tokenizer.json").read_bytes()
        data = download(em, "gs://bkt/data", tmp_path / "data")
        manifest = json.loads((data / "manifest.json").read_text())
        assert manifest["splits"]["eval"]["documents"] == 4
        assert manifest["tokenizer"]["path"] == "gs://bkt/hf/tokenizer.json"  # the URL, not a cache path
    from cpt_jax.train.metrics import read_jsonl

    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow
def test_storage_gone_during_a_save_then_back_resumes_from_the_last_whole_step(tmp_path):
    """The emulator ends while the last checkpoint of a run is being saved, just before orbax's
    commit marker (every other object of step 6 is written). The run is lost with its storage
    (killed). With the emulator back on the same data, the next run deletes the uncommitted step,
    resumes from step 3 and trains steps 4-6 bit for bit as before."""
    data, tok = prepared(tmp_path)
    p = plan("gs://bkt/run", str(data), tok)
    p["phases"] = [PHASES[0]]
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(p))
    em = Emulator("gs", data_dir=tmp_path / "gcs", stop_at="bkt/run/checkpoints/6/commit_success.txt").start()
    try:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        proc = cli(env, tmp_path, "train", "plan.yaml", "--no-progress")
        deadline = time.time() + 400
        while em.proc.poll() is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert em.proc.poll() is not None and proc.poll() is None, proc.communicate()[0][-3000:]
    finally:
        em.stop()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Emulator("gs", data_dir=tmp_path / "gcs", port=em.port) as em:
        before = remote_rows(em, "gs://bkt/run/metrics.jsonl")
        assert max(before) >= 4, sorted(before)  # steps logged after the last whole step (3)
        assert "checkpoints/6/params/_METADATA" in "\n".join(bucket_objects(em, "bkt"))  # all but the marker
        out = cli(env, tmp_path, "train", "plan.yaml", "--no-progress").communicate()[0]
        assert "checkpoint step 6" in out and "was not committed" in out, out[-3000:]
        after = remote_rows(em, "gs://bkt/run/metrics.jsonl")
        assert sorted(after) == [1, 2, 3, 4, 5, 6], out[-3000:]
        assert all(after[s]["loss"] == before[s]["loss"] for s in range(4, max(before) + 1)), out[-3000:]
        assert "run/checkpoints/6/commit_success.txt" in bucket_objects(em, "bkt")

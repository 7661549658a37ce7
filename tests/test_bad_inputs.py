"""Bad inputs across every command: each ends in exactly one `error:` line that names the problem
(and the fix), exit status 2, no traceback, and every existing file as it was (the whole work
folder is hashed before and after; no output is left behind either).

The CLI runs in-process (`cpt_jax.cli.main.main(argv)`), so a case costs what its command does
before it refuses, not a Python start."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hf_fixtures import make_tiny_hf_model
from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

from cpt_jax.cli.main import main

PLAN = {
    "model": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 8,
             "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 8}}},
    "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
    "log": {"tensorboard": False},
    "phases": [{"name": "p", "init": "scratch", "steps": 4, "mixture": {"general": 1.0},
                "schedule": {"shape": "cosine", "peak_lr": 1e-3, "warmup_steps": 1}}],
}


def tree_state(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()} | {
        str(d.relative_to(root)) + "/": "" for d in root.rglob("*") if d.is_dir()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    ro = w / "readonly"
    ro.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(ro)]
    mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    if mounted:
        (ro / ".mounted").write_text("")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    try:
        yield build_world(w)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)


def build_world(w: Path) -> Path:
    """Inputs every case starts from: text, a tokenizer, a prepared source, an HF folder, a
    model checkpoint, a plan and a run directory of another plan."""
    words = vocabulary("a", 40)
    write_jsonl(w / "docs.jsonl", documents(words, 40, seed=0))
    word_level_tokenizer(w / "tokenizer.json", words)
    assert main(["prepare", str(w / "docs.jsonl"), "--out", str(w / "prepared"), "--tokenizer",
                 str(w / "tokenizer.json"), "--eval-docs", "4", "--quiet"]) == 0
    (w / "empty.txt").write_text("")
    (w / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (w / "bad.jsonl").write_text('{not json\n[1, 2\n')
    (w / "notes.csv").write_text("text\nhello\n")
    (w / "garbage_tokenizer.json").write_text("this is no tokenizer")
    make_tiny_hf_model(w / "hf", "llama")
    assert main(["import-hf", str(w / "hf"), str(w / "ckpt")]) == 0
    (w / "nonempty").mkdir()
    (w / "nonempty" / "keep.txt").write_text("mine")
    (w / "plan.yaml").write_text(yaml.safe_dump({**PLAN, "run_dir": str(w / "run")}))
    (w / "run").mkdir()  # a run directory of another plan (its config.yaml says so)
    (w / "run" / "config.yaml").write_text(yaml.safe_dump({"plan_hash": "0123456789abcdef", "config": {}}))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"body": ["a b c", "d e"]}), w / "docs.parquet")
    except ImportError:
        pass
    return w


def read_only(w: Path) -> Path:
    """A read-only filesystem inside the world (mounted by the world fixture)."""
    if not (w / "readonly" / ".mounted").exists():
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    return w / "readonly"


def plan_file(w: Path, name: str, *changes: tuple[str, object]) -> str:
    """A variant of PLAN (run_dir under w/runs/<name>), written into w/plans (before hashing)."""
    from cpt_jax.config.base import apply_overrides
    plan = apply_overrides(copy.deepcopy({**PLAN, "run_dir": str(w / "runs" / name)}), [])
    for key, value in changes:
        node = plan
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = w / "plans" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def hf_copy(w: Path, name: str, change) -> str:
    """A broken copy of the HF folder."""
    out = w / "broken" / name
    if not out.exists():
        shutil.copytree(w / "hf", out)
        change(out)
    return str(out)


def set_arch(arch):
    def change(d):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "architectures": [arch], "model_type": arch.lower()}))
    return change


def truncate_shard(d):
    shard = min(d.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])


def vocab_mismatch_plan(w):
    return plan_file(w, "vocab", ("data.sources", {"text": {"kind": "prepared", "path": str(w / "prepared")}}),
                     ("phases.0.mixture", {"text": 1.0}), ("model.vocab_size", 16), ("tokenizer", str(w / "tokenizer.json")))


# (id, argv from the world folder, words the error must contain)
CASES = [
    # prepare
    ("prepare-empty-input", lambda w: ["prepare", str(w / "empty.txt"), "--out", str(w / "o1"),
                                       "--tokenizer", str(w / "tokenizer.json")], ["empty"]),
    ("prepare-binary-input", lambda w: ["prepare", str(w / "binary.txt"), "--out", str(w / "o2"),
                                        "--tokenizer", str(w / "tokenizer.json")], ["no documents"]),
    ("prepare-missing-jsonl-field", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "o3"),
                                               "--tokenizer", str(w / "tokenizer.json"), "--field", "body"], ["body"]),
    ("prepare-broken-jsonl-line", lambda w: ["prepare", str(w / "bad.jsonl"), "--out", str(w / "o4"),
                                             "--tokenizer", str(w / "tokenizer.json")], ["no documents"]),
    ("prepare-missing-parquet-column", lambda w: ["prepare", str(w / "docs.parquet"), "--out", str(w / "o5"),
                                                  "--tokenizer", str(w / "tokenizer.json")], ["text"]),
    ("prepare-missing-input", lambda w: ["prepare", str(w / "nope.jsonl"), "--out", str(w / "o6"),
                                         "--tokenizer", str(w / "tokenizer.json")], ["nope.jsonl"]),
    ("prepare-unsupported-extension", lambda w: ["prepare", str(w / "notes.csv"), "--out", str(w / "o7"),
                                                 "--tokenizer", str(w / "tokenizer.json")], ["notes.csv"]),
    ("prepare-missing-tokenizer", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "o8"),
                                             "--tokenizer", str(w / "nope.model")], ["nope.model"]),
    ("prepare-garbage-tokenizer", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "o9"),
                                             "--tokenizer", str(w / "garbage_tokenizer.json")], ["garbage_tokenizer"]),
    ("prepare-read-only-out", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(read_only(w) / "o"),
                                         "--tokenizer", str(w / "tokenizer.json")], ["Read-only file system"]),
    ("prepare-eval-fraction", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "o10"),
                                         "--tokenizer", str(w / "tokenizer.json"), "--eval-fraction", "1.5"],
     ["fraction"]),
    # import-hf
    ("import-missing-folder", lambda w: ["import-hf", str(w / "nohf"), str(w / "o11")], ["nohf"]),
    ("import-unsupported-architecture", lambda w: ["import-hf", hf_copy(w, "gpt2", set_arch("GPT2LMHeadModel")),
                                                   str(w / "o12")], ["GPT2"]),
    ("import-truncated-safetensors", lambda w: ["import-hf", hf_copy(w, "trunc", truncate_shard), str(w / "o13")],
     ["safetensors"]),
    ("import-config-not-json", lambda w: ["import-hf", hf_copy(w, "cfgjson", lambda d: (d / "config.json").write_text(
        "{oops")), str(w / "o14")], ["config.json"]),
    ("import-non-empty-out", lambda w: ["import-hf", str(w / "hf"), str(w / "nonempty")], ["--overwrite"]),
    ("import-read-only-out", lambda w: ["import-hf", str(w / "hf"), str(read_only(w) / "o")],
     ["Read-only file system"]),
    # export-hf
    ("export-not-a-checkpoint", lambda w: ["export-hf", str(w / "nonempty"), str(w / "o15")], ["checkpoint"]),
    ("export-missing-step", lambda w: ["export-hf", str(w / "ckpt"), str(w / "o16"), "--step", "99"], ["99"]),
    ("export-non-empty-out", lambda w: ["export-hf", str(w / "ckpt"), str(w / "nonempty")], ["--overwrite"]),
    ("export-bad-shard-size", lambda w: ["export-hf", str(w / "ckpt"), str(w / "o17"), "--max-shard-size", "5XB"],
     ["5XB"]),
    # train
    ("train-missing-plan", lambda w: ["train", str(w / "noplan.yaml")], ["noplan.yaml"]),
    ("train-unknown-key", lambda w: ["train", plan_file(w, "unknown", ("model.hidden_sizes", 32))], ["hidden_sizes"]),
    ("train-unknown-source", lambda w: ["train", plan_file(w, "src", ("phases.0.mixture", {"nosuch": 1.0}))],
     ["nosuch"]),
    ("train-impossible-schedule", lambda w: ["train", plan_file(w, "sched", ("phases.0.schedule.warmup_steps", 50))],
     ["warmup"]),
    ("train-mesh-product", lambda w: ["train", plan_file(w, "mesh", ("mesh", {"data": 3, "fsdp": 1, "tensor": 1}))],
     ["mesh"]),
    ("train-hidden-size-misfit", lambda w: ["train", plan_file(w, "hidden", ("model.hidden_size", 36),
                                                               ("model.num_heads", 2))], ["model.hidden_size=36"]),
    ("train-tensor-exceeds-kv-heads", lambda w: ["train", plan_file(w, "kv", ("mesh", {"data": 1, "fsdp": 2,
                                                                                      "tensor": 4}))],
     ["num_kv_heads"]),
    ("train-micro-batch", lambda w: ["train", plan_file(w, "batch", ("data.global_batch_size", 12))],
     ["global_batch_size"]),
    ("train-eval-batch", lambda w: ["train", plan_file(w, "evalbatch", ("eval", {"batch_size": 6}))],
     ["eval.batch_size"]),
    ("train-synthetic-key-on-prepared", lambda w: ["train", plan_file(
        w, "synkey", ("data.sources", {"text": {"kind": "prepared", "path": str(w / "prepared"), "num_docs": 5}}),
        ("phases.0.mixture", {"text": 1.0}))], ["num_docs"]),
    ("train-vocab-mismatch", lambda w: ["train", vocab_mismatch_plan(w)], ["vocab"]),
    ("train-missing-hf-init", lambda w: ["train", plan_file(w, "hfinit", ("phases.0.init", f"hf:{w / 'nohf'}"))],
     ["nohf"]),
    ("train-run-dir-is-a-file", lambda w: ["train", plan_file(w, "rdfile", ("run_dir", str(w / "empty.txt")))],
     ["empty.txt is a file"]),
    ("train-run-dir-inside-a-file", lambda w: ["train", plan_file(w, "rdsub", ("run_dir", str(w / "empty.txt" / "r")))],
     ["which is a file"]),
    ("train-other-plan-in-run-dir", lambda w: ["train", str(w / "plan.yaml")], ["--force-new"]),
    ("train-bad-override", lambda w: ["train", str(w / "plan.yaml"), "phases"], ["key.sub=value"]),
    # schedule, estimate, eval, report, merge, extend-vocab, demo
    ("schedule-invalid-yaml", lambda w: ["schedule", str(w / "bad.jsonl")], ["bad.jsonl"]),
    ("estimate-zero-devices", lambda w: ["estimate", str(w / "plan.yaml"), "--devices", "0", "--analytic-only"],
     ["device count"]),
    ("eval-missing-model", lambda w: ["eval", "--model", str(w / "nohf"), "--plan", str(w / "plan.yaml")], ["nohf"]),
    ("report-no-metrics", lambda w: ["report", str(w / "nonempty")], ["run directory"]),
    ("merge-missing-recipe", lambda w: ["merge", str(w / "norecipe.yaml"), "--out", str(w / "o18")], ["norecipe"]),
    ("extend-vocab-missing-tokenizer", lambda w: ["extend-vocab", str(w / "ckpt"), "--tokenizer",
                                                  str(w / "nope.json"), "--out", str(w / "o19")], ["nope.json"]),
    ("demo-unknown-key", lambda w: ["demo", "no_such_key=1", "--out", str(w / "o20")], ["no_such_key"]),
    # prepare --out must be prepare's own folder
    ("prepare-out-holds-other-files", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "nonempty"),
                                                 "--tokenizer", str(w / "tokenizer.json")], ["nonempty", "keep.txt"]),
    ("prepare-out-is-a-file", lambda w: ["prepare", str(w / "docs.jsonl"), "--out", str(w / "notes.csv"),
                                         "--tokenizer", str(w / "tokenizer.json")], ["notes.csv is a file"]),
    # keys added since this suite was written (config errors: `schedule` loads the plan as train does)
    ("key-keep-host-memory-type", lambda w: ["schedule", plan_file(w, "khm", ("keep_host_memory", "yes"))],
     ["keep_host_memory", "true or false"]),
    ("key-scan-unroll-negative", lambda w: ["schedule", plan_file(w, "unroll", ("model.scan_unroll", -1))],
     ["model.scan_unroll"]),
    ("key-attention-unknown", lambda w: ["schedule", plan_file(w, "attn", ("model.attention", "flash"))],
     ["model.attention", "flash"]),
    ("key-rope-type-unknown", lambda w: ["schedule", plan_file(w, "ropetype", ("model.rope_scaling",
                                                                                 {"rope_type": "dynamic"}))],
     ["rope_type", "dynamic"]),
    ("key-rope-factor-below-one", lambda w: ["schedule", plan_file(w, "ropefactor", ("model.rope_scaling",
                                                                                       {"rope_type": "yarn",
                                                                                        "factor": 0.5}))],
     ["factor"]),
    ("key-rope-unknown-subkey", lambda w: ["schedule", plan_file(w, "ropekey", ("model.rope_scaling",
                                                                                  {"rope_type": "linear", "factr": 2}))],
     ["factr"]),
    ("key-yarn-beta-order", lambda w: ["schedule", plan_file(w, "yarnbeta", ("model.rope_scaling", {
        "rope_type": "yarn", "factor": 2.0, "beta_fast": 1.0, "beta_slow": 4.0}))], ["model.rope_scaling.beta_fast"]),
    ("key-yarn-attention-factor", lambda w: ["schedule", plan_file(w, "yarnattn", ("model.rope_scaling", {
        "rope_type": "yarn", "factor": 2.0, "attention_factor": -1.0}))], ["attention_factor"]),
    ("key-yarn-truncate-type", lambda w: ["schedule", plan_file(w, "yarntrunc", ("model.rope_scaling", {
        "rope_type": "yarn", "factor": 2.0, "truncate": "yes"}))], ["model.rope_scaling.truncate"]),
    ("key-qkv-bias-contradicts-family", lambda w: ["schedule", plan_file(w, "qkvb", ("model.qkv_bias", True))],
     ["model.qkv_bias", "llama"]),
    ("key-qk-norm-contradicts-family", lambda w: ["train", plan_file(w, "qkn", ("model.family", "qwen3"),
                                                                     ("model.qk_norm", False))],
     ["model.qk_norm", "qwen3"]),
    ("key-from-ema-scratch", lambda w: ["schedule", plan_file(w, "emascratch", ("phases.0.from_ema", True))],
     ["from_ema"]),
    ("key-from-ema-without-decay", lambda w: ["train", plan_file(w, "emadecay", ("phases", [
        PLAN["phases"][0], {**PLAN["phases"][0], "name": "q", "init": "previous", "from_ema": True}]))],
     ["ema_decay"]),
    ("key-ema-decay-range", lambda w: ["schedule", plan_file(w, "emarange", ("optimizer.ema_decay", 1.5))],
     ["optimizer.ema_decay"]),
    ("key-phase-seq-len-zero", lambda w: ["schedule", plan_file(w, "pseq0", ("phases.0.seq_len", 0))],
     ["seq_len"]),
    ("key-phase-seq-len-beyond-context", lambda w: ["schedule", plan_file(w, "pseqlong", ("phases.0.seq_len", 128))],
     ["seq_len=128", "max_position_embeddings=64"]),
    ("key-phase-batch-negative", lambda w: ["schedule", plan_file(w, "pbatch", ("phases.0.global_batch_size", -8))],
     ["global_batch_size"]),
    ("key-phase-rope-theta-zero", lambda w: ["schedule", plan_file(w, "ptheta", ("phases.0.rope_theta", 0))],
     ["rope_theta"]),
    ("key-phase-max-position-zero", lambda w: ["schedule", plan_file(w, "pmax", ("phases.0.max_position_embeddings",
                                                                                 0))],
     ["max_position_embeddings"]),
    ("key-phase-rope-scaling-type", lambda w: ["schedule", plan_file(w, "prope", ("phases.0.rope_scaling",
                                                                                    {"rope_type": "ntk"}))],
     ["rope_type"]),
    ("key-dense-first-alone", lambda w: ["schedule", plan_file(w, "dense", ("eval", {"dense_first": 5}))],
     ["dense_every"]),
    ("key-dense-every-negative", lambda w: ["schedule", plan_file(w, "denseneg", ("eval", {"dense_first": 2,
                                                                                           "dense_every": -1}))],
     ["dense_every"]),
    ("key-wandb-mode", lambda w: ["schedule", plan_file(w, "wandb", ("log.wandb_mode", "cloud"))],
     ["log.wandb_mode", "cloud"]),
    ("key-eval-task-missing-path", lambda w: ["schedule", plan_file(w, "taskpath", ("eval", {"tasks": [
        {"name": "t"}]}))], ["path"]),
    ("key-duplicate-eval-task", lambda w: ["schedule", plan_file(w, "taskdup", ("eval", {"tasks": [
        {"name": "t", "path": "a.jsonl"}, {"name": "t", "path": "b.jsonl"}]}))], ["used twice"]),
    ("key-carry-data-after-previous", lambda w: ["schedule", plan_file(w, "carry", ("phases", [
        PLAN["phases"][0], {**PLAN["phases"][0], "name": "q", "init": "previous", "carry": "params+data"}]))],
     ["carry"]),
    # init: hf:DIR plans take the model from DIR
    ("hf-init-contradicting-model", lambda w: ["train", plan_file(w, "hfcontra", ("phases.0.init", f"hf:{w / 'hf'}"),
                                                                  ("model", {"hidden_size": 64}))],
     ["model.hidden_size", "64", "48"]),
    ("hf-init-no-model-no-folder", lambda w: ["schedule", plan_file(w, "hfnomodel", ("phases.0.init",
                                                                                       f"hf:{w / 'nohf'}"),
                                                                    ("model", None))], ["nohf", "config.json"]),
    ("hf-init-model-type-unsupported", lambda w: ["schedule", plan_file(
        w, "hfgpt2", ("phases.0.init", f"hf:{hf_copy(w, 'gpt2mt', drop_arch('gpt2'))}"), ("model", None))],
     ["model_type 'gpt2'"]),
    ("import-model-type-unsupported", lambda w: ["import-hf", hf_copy(w, "gpt2mt", drop_arch("gpt2")),
                                                 str(w / "o21")], ["model_type 'gpt2'"]),
    # optimizer.freeze and a phase's freeze
    ("key-freeze-bad-range", lambda w: ["schedule", plan_file(w, "frzrange", ("optimizer.freeze", ["layers[0:2"]))],
     ["optimizer.freeze", "layers[a:b]"]),
    ("key-phase-freeze-bad-range", lambda w: ["schedule", plan_file(w, "frzphase", ("phases.0.freeze",
                                                                                     ["layers[x:2]"]))],
     ["phases[0].freeze"]),
    ("train-freeze-unknown-parameter", lambda w: ["train", plan_file(w, "frzname", ("optimizer.freeze",
                                                                                    ["embeddings"]))],
     ["embeddings", "matches no parameter"]),
    # keys added with the memory, storage and profiling work
    ("key-logits-vocab-tiles-zero", lambda w: ["schedule", plan_file(w, "tiles0", ("model.logits_vocab_tiles", 0))],
     ["model.logits_vocab_tiles", ">= 1"]),
    ("key-logits-chunk-negative", lambda w: ["schedule", plan_file(w, "chunkneg", ("model.logits_chunk", -1))],
     ["model.logits_chunk", ">= 0"]),
    ("key-mu-dtype-unknown", lambda w: ["schedule", plan_file(w, "mudtype", ("optimizer.mu_dtype", "float7"))],
     ["optimizer.mu_dtype", "float32"]),
    ("key-mesh-context-zero", lambda w: ["schedule", plan_file(w, "ctx0", ("mesh.context", 0))], ["mesh.context"]),
    ("train-mesh-context-misfit", lambda w: ["train", plan_file(w, "ctx3", ("mesh", {"data": 1, "fsdp": -1, "tensor": 1,
                                                                                    "context": 3}))],
     ["mesh"]),
    ("key-profile-processes", lambda w: ["schedule", plan_file(w, "profproc", ("profile", {
        "start_step": 1, "steps": 1, "processes": "some"}))], ["profile.processes"]),
    ("key-profile-start-step-negative", lambda w: ["schedule", plan_file(w, "profneg", ("profile", {
        "start_step": -2}))], ["profile.start_step"]),
    ("train-s3-run-dir", lambda w: ["train", plan_file(w, "s3run", ("run_dir", "s3://bkt/run"))], ["s3://", "gs://"]),
    # launch
    ("launch-mesh-not-the-target", lambda w: ["launch", str(w / "plan.yaml"), "--target", "v5p-256", "--slices", "2",
                                              "--format", "gke", "--image", "i", "--out", str(w / "kit1")],
     ["mesh.dcn_data=2"]),
    ("launch-unknown-target", lambda w: ["launch", str(w / "plan.yaml"), "--target", "tpu-v9:2x2", "--format",
                                         "slurm", "--out", str(w / "kit2")], ["tpu-v9:2x2"]),
    ("launch-kit-exists", lambda w: ["launch", str(w / "plan.yaml"), "--target", "h100x8", "--format", "slurm",
                                     "--out", str(w / "notes.csv")], ["notes.csv", "exists"]),
    ("launch-tpu-format-for-gpus", lambda w: ["launch", str(w / "plan.yaml"), "--target", "h100x8", "--format",
                                              "tpu-vm", "--out", str(w / "kit3")], ["--format slurm"]),
    # every command
    ("schedule-plot-read-only", lambda w: ["schedule", str(w / "plan.yaml"), "--plot", str(read_only(w) / "lr.png")],
     ["lr.png"]),
    ("schedule-missing-plan", lambda w: ["schedule", str(w / "noplan.yaml")], ["noplan.yaml"]),
    ("estimate-unknown-device", lambda w: ["estimate", str(w / "plan.yaml"), "--devices", "8", "--device", "h900",
                                           "--analytic-only"], ["h900"]),
    ("estimate-unknown-key", lambda w: ["estimate", plan_file(w, "estkey", ("optimizer.lr", 1)), "--devices", "8",
                                        "--analytic-only"], ["optimizer.lr"]),
    ("eval-missing-plan", lambda w: ["eval", str(w / "noplan.yaml")], ["noplan.yaml"]),
    ("eval-missing-task-file", lambda w: ["eval", "--model", str(w / "hf"), "--task", f"t={w / 'notask.jsonl'}"],
     ["notask.jsonl"]),
    ("eval-bad-task-spec", lambda w: ["eval", "--model", str(w / "hf"), "--task", "nopath"], ["NAME=PATH"]),
    ("report-missing-run", lambda w: ["report", str(w / "norun")], ["norun"]),
    ("fit-mixture-missing-run", lambda w: ["fit-mixture", str(w / "norun"), "--replay", "general"], ["norun"]),
    ("fit-mixture-no-metrics", lambda w: ["fit-mixture", str(w / "nonempty"), str(w / "run"), "--replay", "general"],
     ["nonempty"]),
    ("merge-recipe-not-yaml", lambda w: ["merge", str(w / "bad.jsonl"), "--out", str(w / "o22")], ["bad.jsonl"]),
    ("merge-unknown-method", lambda w: ["merge", recipe(w, "method", {"merge_method": "frankenmerge", "models": [
        {"model": str(w / "hf")}]}), "--out", str(w / "o23")], ["frankenmerge"]),
    ("merge-missing-model", lambda w: ["merge", recipe(w, "nomodel", {"merge_method": "linear", "models": [
        {"model": str(w / "nohf"), "parameters": {"weight": 1.0}}]}), "--out", str(w / "o24")], ["nohf"]),
    ("extend-vocab-missing-model", lambda w: ["extend-vocab", str(w / "nockpt"), "--tokenizer",
                                              str(w / "tokenizer.json"), "--out", str(w / "o25")], ["nockpt"]),
    ("extend-vocab-non-empty-out", lambda w: ["extend-vocab", str(w / "ckpt"), "--tokenizer",
                                              str(w / "tokenizer.json"), "--out", str(w / "nonempty")],
     ["--overwrite"]),
    ("export-missing-checkpoint", lambda w: ["export-hf", str(w / "nockpt"), str(w / "o26")], ["nockpt"]),
    ("import-out-is-a-file", lambda w: ["import-hf", str(w / "hf"), str(w / "notes.csv")], ["notes.csv"]),
    ("demo-negative-dense-first", lambda w: ["demo", "dense_first=-1", "--out", str(w / "o27")], ["dense_first"]),
    ("demo-negative-task-items", lambda w: ["demo", "task_items=-1", "--out", str(w / "o28")], ["task_items"]),
    ("demo-replay-out-of-range", lambda w: ["demo", "replay=1.5", "--out", str(w / "o29")], ["replay"]),
    ("train-missing-tokenizer-file", lambda w: ["train", plan_file(w, "tokfile", ("tokenizer", str(w / "nope.json")),
                                                                   ("data.sources", {"text": {
                                                                       "kind": "prepared",
                                                                       "path": str(w / "prepared")}}),
                                                                   ("phases.0.mixture", {"text": 1.0}))],
     ["nope.json"]),
]


def drop_arch(model_type):
    """A config.json without `architectures` whose model_type names no supported family."""
    def change(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("architectures", None)
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
    return change


def recipe(w: Path, name: str, body: dict) -> str:
    path = w / "recipes" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _quiet(case):
    name, argv, words = case
    if not name.startswith("prepare"):
        return case
    return name, lambda w: [*argv(w), "--quiet", *([] if "--eval-fraction" in argv(w) else ["--eval-docs", "4"])], words


CASES = [_quiet(c) for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_touches_nothing(world, capsys, case):
    _, argv, words = case
    if case[0] == "prepare-missing-parquet-column" and not (world / "docs.parquet").exists():
        pytest.skip("pyarrow is not installed")
    args = argv(world)  # may write the case's own input first
    capsys.readouterr()
    before = tree_state(world)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    assert tree_state(world) == before


def test_the_suite_covers_every_command(world):
    from cpt_jax.cli.main import COMMANDS
    assert len(CASES) >= 60
    assert {argv(world)[0] for _, argv, _ in CASES} == set(COMMANDS)


def test_prepare_reruns_into_its_own_output(world, capsys):
    """--out that holds only an earlier prepare's output is prepare's own: a rerun with the same
    inputs is accepted and changes nothing."""
    before = tree_state(world / "prepared")
    assert main(["prepare", str(world / "docs.jsonl"), "--out", str(world / "prepared"), "--tokenizer",
                 str(world / "tokenizer.json"), "--eval-docs", "4", "--quiet"]) == 0, capsys.readouterr().err
    assert tree_state(world / "prepared") == before


@pytest.fixture
def tiny_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill ({proc.stderr.strip()}); needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("command", ["prepare", "export-hf"])
def test_disk_full_during_output_is_one_error_and_leaves_nothing(world, tiny_disk, capsys, command):
    """A real 24 KiB filesystem fills up while the output is written."""
    if command == "prepare":
        args = ["prepare", str(world / "docs.jsonl"), "--out", str(tiny_disk / "out"), "--tokenizer",
                str(world / "tokenizer.json"), "--quiet", "--eval-docs", "4"]
    else:
        args = ["export-hf", str(world / "ckpt"), str(tiny_disk / "out")]
    before = tree_state(world)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], err[-2000:]
    assert tree_state(world) == before
    if command == "export-hf":  # staged: whole or absent (prepare keeps finished shards to resume)
        assert not [p for p in tiny_disk.rglob("*.safetensors")]

"""`cpt-jax eval` on a run directory, its plan, its checkpoint and its exported HF folder: the same
held-out numbers the training loop logged, and the same task scores whichever way the model is named."""

import json

import pytest
import yaml

from hf_fixtures import make_tiny_hf_model

from cpt_jax.cli.main import main
from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.hf import export_hf, hf_config_to_model_config, read_hf_config
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_cli")
    hf_dir = make_tiny_hf_model(tmp / "hf", "llama")
    tasks = tmp / "mc.jsonl"
    tasks.write_text("".join(json.dumps({"context": f"w{10 + i} w{20 + i} w{30 + i}",
                                         "choices": [f"w{40 + i}", f"w{50 + i} w{60 + i}", f"w{70 + i}"],
                                         "gold": i % 3}) + "\n" for i in range(10)))
    plan = {
        "run_dir": str(tmp / "run"), "tokenizer": str(hf_dir / "tokenizer.json"),
        "model": to_dict(hf_config_to_model_config(read_hf_config(hf_dir))),
        "data": {"seq_len": 32, "global_batch_size": 8,
                 "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 16},
                             "domain": {"kind": "synthetic", "seed": 2, "num_docs": 64, "eval_docs": 16}}},
        "mesh": {"data": 2, "fsdp": 4}, "log": {"tensorboard": False},
        "eval": {"every": 2, "batches": 1, "tasks": [{"name": "mc", "path": str(tasks)}],
                 "dense_first": 2, "dense_every": 1},
        "phases": [{"name": "cpt", "init": f"hf:{hf_dir}", "carry": "params", "steps": 2,
                    "mixture": {"domain": 1.0}, "schedule": {"shape": "constant", "peak_lr": 1e-3}}],
    }
    plan_file = tmp / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    Trainer(from_dict(RunConfig, plan), progress=False).run()
    logged = {r["source"]: r["loss"] for r in read_jsonl(tmp / "run" / "metrics.jsonl")
              if r["kind"] == "eval" and r["step"] == 2}
    return tmp, plan_file, tasks, logged


def _eval(tmp, name, *argv):
    out = tmp / f"{name}.json"
    assert main(["eval", *map(str, argv), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_run_dir_and_plan_reproduce_the_logged_heldout_loss(trained, capsys):
    tmp, plan_file, _, logged = trained
    by_run = _eval(tmp, "run", tmp / "run")
    assert by_run["step"] == 2 and set(by_run["heldout"]) == set(logged) == {"general", "domain"}
    for source, loss in logged.items():
        assert abs(by_run["heldout"][source]["loss"] - loss) < 1e-5, source
    assert by_run["tasks"]["mc"]["n"] == 10  # the plan's eval.tasks come along
    by_plan = _eval(tmp, "plan", plan_file)  # the original usage: cpt-jax eval PLAN
    assert by_plan["heldout"] == by_run["heldout"]
    printed = capsys.readouterr().out
    assert "domain" in printed and "acc_norm" in printed


def test_exported_hf_folder_scores_the_same(trained):
    tmp, plan_file, tasks, logged = trained
    hf_out = export_hf(tmp / "run", tmp / "hf_out")
    by_run = json.loads((tmp / "run.json").read_text())  # written by the test above
    by_hf = _eval(tmp, "hf", "--model", hf_out, "--plan", plan_file, "--task", f"mc={tasks}")
    assert by_hf["step"] is None and by_hf["target"] == str(hf_out)
    for key in ("acc", "acc_norm", "n"):
        assert by_hf["tasks"]["mc"][key] == by_run["tasks"]["mc"][key]
    for source, loss in logged.items():
        assert abs(by_hf["heldout"][source]["loss"] - loss) < 1e-5, source


def test_errors_name_the_fix(trained, capsys):
    tmp, _, tasks, _ = trained
    assert main(["eval", str(tmp / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp / "hf")]) == 2  # no plan, no tasks
    assert "give one, or give downstream tasks" in capsys.readouterr().err
    bad = tmp / "bad.jsonl"
    bad.write_text('{"context": "w3", "choices": ["w4", "w5"], "gold": 5}\n')
    assert main(["eval", "--model", str(tmp / "hf"), "--task", f"bad={bad}"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_the_loop_scores_tasks_at_every_eval_and_densely_early(trained):
    """In training: held-out loss and task scores at the phase start, at the dense early steps and at
    the end; the logged task scores equal `cpt-jax eval` of the same checkpoint."""
    tmp, _, _, _ = trained
    rows = read_jsonl(tmp / "run" / "metrics.jsonl")
    assert sorted({r["step"] for r in rows if r["kind"] == "eval"}) == [0, 1, 2]
    task = {r["step"]: r for r in rows if r["kind"] == "task" and r["task"] == "mc"}
    assert sorted(task) == [0, 1, 2] and task[2]["n"] == 10
    by_run = _eval(tmp, "run-again", tmp / "run")
    for key in ("acc", "acc_norm"):
        assert task[2][key] == by_run["tasks"]["mc"][key]


def test_tasks_without_a_tokenizer_stop_before_the_run_dir_is_touched(tmp_path):
    from cpt_jax.errors import ConfigError

    tasks = tmp_path / "mc.jsonl"
    tasks.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "gold": 0}) + "\n")
    plan = {"run_dir": str(tmp_path / "run"),
            "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                      "max_position_embeddings": 64},
            "data": {"seq_len": 16, "global_batch_size": 8, "sources": {"a": {"kind": "synthetic"}}},
            "eval": {"tasks": [{"name": "mc", "path": str(tasks)}]},
            "phases": [{"name": "p", "init": "scratch", "steps": 2, "mixture": {"a": 1.0},
                        "schedule": {"shape": "constant", "peak_lr": 1e-3}}]}
    with pytest.raises(ConfigError, match="tokenizer"):
        Trainer(from_dict(RunConfig, plan), progress=False)
    assert not (tmp_path / "run").exists()

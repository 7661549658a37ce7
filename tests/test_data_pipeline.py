"""The training pipeline: exact mixing, packing, determinism across hosts/workers/resume, eval."""

import json

import numpy as np
import pytest

from cpt_jax.data import DataConfig, DataError, DataPipeline, SourceConfig
from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl
from cpt_jax.data.prepare import PrepareOptions, prepare

NEW_WORDS, REPLAY_WORDS = vocabulary("n", 40), vocabulary("r", 40)
EOS = 1
NEW_IDS = range(2, 42)  # word-level ids: [UNK]=0, </s>=1, new words, then replay words
REPLAY_IDS = range(42, 82)
SEQ = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    tok = word_level_tokenizer(root / "tok" / "tokenizer.json", NEW_WORDS + REPLAY_WORDS)
    out = {}
    for name, words, n in (("new", NEW_WORDS, 120), ("replay", REPLAY_WORDS, 60)):
        src = write_jsonl(root / "raw" / f"{name}.jsonl", documents(words, n, seed=len(name), max_words=40))
        prepare(PrepareOptions(inputs=(str(src),), out=str(root / name), tokenizer=str(tok), eval_docs=5,
                               shard_docs=32, progress=False))
        out[name] = str(root / name)
    out["tokenizer"] = str(tok)
    return out


def make_pipe(prepared, batch=8, seq=SEQ, **kw):
    sources = {n: SourceConfig(path=prepared[n]) for n in ("new", "replay")}
    return DataPipeline(DataConfig(sources=sources, seq_len=seq, global_batch_size=batch, seed=7, **kw))


def row_source(tokens):
    body = set(tokens[tokens != EOS].tolist())
    if body <= set(NEW_IDS):
        return "new"
    assert body <= set(REPLAY_IDS), f"row mixes sources: {sorted(body)}"
    return "replay"


def count_rows(batch):
    counts = {"new": 0, "replay": 0}
    for tokens, ids in zip(batch["tokens"], batch["source_ids"]):
        name = row_source(tokens)
        assert np.all(ids == ("new", "replay").index(name)), "source_ids names the row's source"
        counts[name] += 1
    return counts


@pytest.mark.parametrize("mixture, batch", [
    ({"new": 0.95, "replay": 0.05}, 64),
    ({"new": 0.75, "replay": 0.25}, 8),
    ({"new": 0.2, "replay": 0.8}, 10),
    ({"new": 0.99, "replay": 0.01}, 16),  # below 1/16: one replay row every few batches
])
def test_every_batch_holds_the_planned_counts(prepared, mixture, batch):
    pipe = make_pipe(prepared, batch=batch)
    plan = pipe.plan(mixture)
    for step in (0, 1, 2, 57):  # 57: replay has long rolled over into later epochs
        assert count_rows(pipe.global_batch(mixture, step=step)) == dict(zip(plan.names, plan.counts(step)))


def test_five_percent_replay_trains_five_percent_of_rows(prepared):
    """Done-when of issue 18: 5% replay at batch 64 over 200 steps is 640 of 12800 rows, 3 or 4 a batch."""
    pipe = make_pipe(prepared, batch=64)
    mixture = {"new": 0.95, "replay": 0.05}
    it = pipe.train_iterator(mixture, num_steps=200)
    per_batch = [int(np.sum(b["source_ids"][:, 0] == 1)) for b in it]
    assert len(per_batch) == 200 and set(per_batch) == {3, 4} and sum(per_batch) == 640
    state = it.state()
    assert state["realised"] == {"new": 0.95, "replay": 0.05}
    assert state["rows"] == {"new": 12160, "replay": 640}
    assert pipe.consumption(mixture, step=200) == {n: {"tokens": state["tokens"][n], "epochs": state["epochs"][n]}
                                                   for n in ("new", "replay")}
    assert state["epochs"]["replay"] == pytest.approx(640 * SEQ / state["epoch_tokens"]["replay"])


def test_batches_identical_for_any_host_count(prepared):
    pipe = make_pipe(prepared, batch=8)
    mix = {"new": 0.75, "replay": 0.25}
    want = [pipe.global_batch(mix, step=s) for s in range(5)]
    for hosts in (1, 2, 4):
        slices = [list(_take(pipe.train_iterator(mix, process_index=p, process_count=hosts), 5)) for p in range(hosts)]
        for s in range(5):
            for key in want[s]:
                got = np.concatenate([slices[p][s][key] for p in range(hosts)])
                np.testing.assert_array_equal(got, want[s][key], err_msg=f"{hosts} hosts, step {s}, {key}")


def test_batches_identical_with_worker_processes(prepared):
    mix = {"new": 0.75, "replay": 0.25}
    plain = make_pipe(prepared, batch=8)
    it = make_pipe(prepared, batch=8, workers=2).train_iterator(mix, start_step=3, process_index=1, process_count=2)
    got = list(_take(it, 4))
    it.close()
    for i, batch in enumerate(got):
        want = plain.global_batch(mix, step=3 + i)
        for key in batch:
            np.testing.assert_array_equal(batch[key], want[key][4:], err_msg=f"step {3 + i} {key}")


def test_stop_and_resume_gives_the_same_stream(prepared):
    pipe = make_pipe(prepared, batch=8)
    mix = {"new": 0.75, "replay": 0.25}
    it = pipe.train_iterator(mix)
    straight = list(_take(it, 9))
    first = pipe.train_iterator(mix)
    list(_take(first, 4))
    state = json.loads(json.dumps(first.state()))
    assert state["step"] == 4 and state["rows"] == {"new": 24, "replay": 8}
    assert state["tokens"] == {"new": 4 * 6 * SEQ, "replay": 4 * 2 * SEQ}
    resumed = list(_take(make_pipe(prepared, batch=8).resume(state), 5))
    for a, b in zip(straight[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # start_step jumps straight there too
    jumped = next(pipe.train_iterator(mix, start_step=6))
    np.testing.assert_array_equal(jumped["tokens"], straight[6]["tokens"])


def test_next_phase_continues_each_stream(prepared):
    """Phase 2 starts every source where phase 1 left it: no row is seen twice before an epoch ends."""
    pipe = make_pipe(prepared, batch=8)
    one = pipe.train_iterator({"new": 0.75, "replay": 0.25}, phase=0)
    list(_take(one, 3))
    end = one.state()
    plan_offsets = pipe.phase_start_tokens([({"new": 0.75, "replay": 0.25}, 3), ({"new": 1.0}, 5)], phase=1)
    assert plan_offsets == end["tokens"]
    two = next(pipe.train_iterator({"new": 0.5, "replay": 0.5}, phase=1, start_tokens=end["tokens"]))
    stream = make_pipe(prepared, batch=8)
    # the same rows, read directly: source rows that follow the 18 new / 6 replay rows of phase 1
    only_new = stream.global_batch({"new": 1.0}, step=0, start_tokens={"new": end["tokens"]["new"]})
    plan = pipe.plan({"new": 0.5, "replay": 0.5})
    new_rows = two["tokens"][[j for j, k in enumerate(plan.layout(0)[0]) if plan.names[k] == "new"]]
    np.testing.assert_array_equal(new_rows, only_new["tokens"][:4])


def test_packing_keeps_documents_apart_and_loses_nothing(prepared):
    pipe = make_pipe(prepared, batch=4)
    src = pipe.sources["replay"].train
    stream = pipe._streams["replay"]
    total = int(src.lengths.sum())
    rows = []
    for p in range(-(-total // SEQ)):
        row = stream.read(p * SEQ, SEQ)
        tokens, seg, pos = row["tokens"], row["segment_ids"], row["positions"]
        assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(seg > 0)
        ends = np.nonzero(np.diff(seg))[0]
        assert np.all(tokens[ends] == EOS), "a segment may only end (inside a row) at EOS"
        eos_inside = np.nonzero(tokens[:-1] == EOS)[0]
        assert np.all(seg[eos_inside + 1] != seg[eos_inside]), "a new document needs a new segment"
        for s in np.unique(seg):
            np.testing.assert_array_equal(pos[seg == s], np.arange(np.sum(seg == s)))
        rows.append(tokens)
    flat = np.concatenate(rows)[:total]  # one epoch, row after row
    docs = np.split(flat, np.nonzero(flat == EOS)[0] + 1)[:-1]
    want = sorted(tuple(src[i].tolist()) for i in range(len(src.lengths)))
    assert sorted(tuple(d.tolist()) for d in docs) == want
    assert len(want) == json.load(open(f"{prepared['replay']}/manifest.json"))["splits"]["train"]["documents"]


def test_batches_read_every_row_of_a_block_once_in_spread_order(prepared):
    """A source's rows in one batch come from all over a block of its stream; over the block each
    row of the stream is read exactly once, so an epoch is neither re-read nor skipped."""
    from cpt_jax.data.pipeline import block_position, block_rows

    pipe = make_pipe(prepared, batch=4)
    stream = pipe._streams["replay"]
    width = block_rows(stream.epoch_tokens, SEQ)
    assert 4 < width <= stream.epoch_tokens // SEQ
    steps = 3 * width // 4 + 1
    got = np.concatenate([pipe.global_batch({"replay": 1.0}, step=s)["tokens"] for s in range(steps)])
    positions = [block_position(n, width) for n in range(len(got))]
    assert sorted(positions[:3 * width]) == list(range(3 * width))  # a bijection, block by block
    for n, p in enumerate(positions):
        np.testing.assert_array_equal(got[n], stream.read(p * SEQ, SEQ)["tokens"])
    gaps = np.abs(np.diff(positions[:4]))
    assert gaps.min() >= width // 4, "one batch's rows are spread over the block"
    wide = [block_position(n, 1024) for n in range(8)]
    assert min(abs(a - b) for i, a in enumerate(wide) for b in wide[i + 1:]) >= 1024 // 16


def test_epochs_roll_over_with_a_new_shuffle(prepared):
    pipe = make_pipe(prepared, batch=4)
    stream = pipe._streams["replay"]
    it = pipe.train_iterator({"replay": 1.0})
    per_epoch = stream.epoch_tokens
    steps = -(-(per_epoch * 5 // 2) // (4 * SEQ))
    list(_take(it, steps))
    state = it.state()
    assert state["epochs"]["replay"] == state["tokens"]["replay"] / per_epoch
    assert int(state["epochs"]["replay"]) == 2
    orders = [stream.layout(e)[0] for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(len(o))) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    other_seed = DataPipeline(DataConfig(sources={"replay": SourceConfig(path=prepared["replay"])}, seed=8))
    assert not np.array_equal(other_seed._streams["replay"].layout(0)[0], orders[0])


def test_held_out_documents_never_train(prepared):
    pipe = make_pipe(prepared, batch=8)
    for name in ("new", "replay"):
        src = pipe.sources[name]
        train = {tuple(src.train[i].tolist()) for i in range(len(src.train.lengths))}
        held = [tuple(src.eval[i].tolist()) for i in range(len(src.eval.lengths))]
        assert len(held) == 5 and not train.intersection(held)
        assert name in pipe.eval_sources()
        batches = pipe.eval_batches(name, num_batches=3, batch_size=2)
        again = make_pipe(prepared, batch=8).eval_batches(name, num_batches=3, batch_size=2)
        flat = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
        assert flat.size == min(sum(map(len, held)), 3 * 2 * SEQ)
        for a, b in zip(batches, again):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_checks_refuse_bad_vocab_and_tokenizer(prepared, tmp_path):
    pipe = make_pipe(prepared)
    pipe.check(vocab_size=82)
    with pytest.raises(DataError, match="holds token id 81 but the model's vocab_size is 64"):
        pipe.check(vocab_size=64)
    from cpt_jax.data.hashing import sha256_file
    pipe.check(vocab_size=82, tokenizer_fingerprint=sha256_file(prepared["tokenizer"]))
    pipe.check(vocab_size=82, tokenizer=prepared["tokenizer"])
    with pytest.raises(DataError, match="different tokenizer"):
        pipe.check(vocab_size=82, tokenizer_fingerprint="0" * 64)
    with pytest.raises(DataError, match="different tokenizer"):
        pipe.check(vocab_size=82, tokenizer=str(word_level_tokenizer(tmp_path / "t2.json", NEW_WORDS)))
    # a source prepared with another tokenizer cannot join this mixture
    tok = word_level_tokenizer(tmp_path / "other.json", NEW_WORDS)
    src = write_jsonl(tmp_path / "o.jsonl", documents(NEW_WORDS, 20, seed=3))
    prepare(PrepareOptions(inputs=(str(src),), out=str(tmp_path / "o"), tokenizer=str(tok), eval_docs=2,
                           progress=False))
    with pytest.raises(DataError, match="different tokenizers"):
        DataPipeline(DataConfig(sources={"new": SourceConfig(path=prepared["new"]),
                                         "o": SourceConfig(path=str(tmp_path / "o"))}))


def test_bad_runtime_requests(prepared, tmp_path):
    pipe = make_pipe(prepared, batch=8)
    with pytest.raises(DataError, match="not divisible by the 3 processes"):
        pipe.train_iterator({"new": 1.0}, process_index=0, process_count=3)
    with pytest.raises(DataError, match="unknown source"):
        pipe.global_batch({"wiki": 1.0})
    with pytest.raises(DataError, match="phase 1 needs start_tokens"):
        pipe.train_iterator({"new": 1.0}, phase=1)
    with pytest.raises(DataError, match="data.seed"):
        make_pipe(prepared, batch=8).resume({**pipe.train_iterator({"new": 1.0}).state(), "seed": 1})
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unit-00000.json").write_text("{}")
    with pytest.raises(DataError, match="did not finish. Rerun the same prepare command"):
        DataPipeline(DataConfig(sources={"x": SourceConfig(path=str(tmp_path / "half"))}))


def test_synthetic_source_is_deterministic_and_learnable():
    cfg = DataConfig(sources={"s": SourceConfig(kind="synthetic", num_docs=64, eval_docs=8)}, seq_len=32,
                     global_batch_size=4)
    deferred = DataPipeline(cfg)  # vocab_size 0: the model's, known once check() is called
    with pytest.raises(DataError, match="take the model's vocab_size"):
        deferred.global_batch({"s": 1.0})
    deferred.check(vocab_size=128)
    a, b = DataPipeline(cfg, vocab_size=128), deferred
    batch = a.global_batch({"s": 1.0}, step=3)
    np.testing.assert_array_equal(batch["tokens"], b.global_batch({"s": 1.0}, step=3)["tokens"])
    a.check(vocab_size=128)
    with pytest.raises(DataError):
        a.check(vocab_size=64)
    # learnable: inside documents the next token is (almost always) a function of the current one
    tokens = np.concatenate([a.global_batch({"s": 1.0}, step=s)["tokens"].ravel() for s in range(20)])
    pairs = {}
    for cur, nxt in zip(tokens[:-1], tokens[1:]):
        pairs.setdefault(int(cur), []).append(int(nxt))
    predictable = sum(max(np.bincount(v)) for v in pairs.values()) / (len(tokens) - 1)
    assert predictable > 0.75
    assert len(a.eval_batches("s", 2, 4)) == 2


def test_host_row_range_and_global_arrays():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from cpt_jax.sharding.placement import host_row_range, to_global_batch

    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    assert host_row_range(sharding, 16, SEQ) == (0, 16)  # one process holds every row
    cfg = DataConfig(sources={"s": SourceConfig(kind="synthetic", vocab_size=64)}, seq_len=SEQ, global_batch_size=16)
    local = next(DataPipeline(cfg).train_iterator({"s": 1.0}, row_range=(0, 16)))
    arrays = to_global_batch(local, sharding, 16)
    assert arrays["tokens"].shape == (16, SEQ) and arrays["tokens"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(arrays["segment_ids"]), local["segment_ids"])


def _take(it, n):
    for _ in range(n):
        yield next(it)


def test_schedule_forecast_matches_the_pipeline_and_warns(prepared):
    from dataclasses import replace

    from cpt_jax.data.forecast import forecast, format_forecast

    pipe = make_pipe(prepared, batch=8)
    phases = [("a", {"new": 1.0}, 10), ("b", {"new": 0.95, "replay": 0.05}, 300)]
    result = forecast(replace(pipe.cfg, max_epochs_warning=2.0), phases)
    start = pipe.phase_start_tokens([(m, n) for _, m, n in phases], 1)
    end = pipe.consumption(phases[1][1], phase=1, step=300, start_tokens=start)
    last = {r["source"]: r for r in result["rows"] if r["phase"] == "b"}
    for name in ("new", "replay"):
        assert last[name]["total_tokens"] == end[name]["tokens"]
        assert last[name]["epochs"] == pytest.approx(end[name]["epochs"])
    assert last["replay"]["share"] == 0.05 and last["replay"]["tokens"] == 120 * SEQ
    over = sorted(r["source"] for r in result["rows"] if r["epochs"] > 2.0 and r["phase"] == "b")
    assert over == ["new"] and len(result["warnings"]) == 1 and "'new' is repeated" in result["warnings"][0]
    assert "max_epochs_warning" in format_forecast(result)
    missing = forecast(DataConfig(sources={"x": SourceConfig(path="/nonexistent")}), [("a", {"x": 1.0}, 5)])
    assert missing["rows"][0]["epochs"] is None and "not prepared yet" in missing["notes"][0]


def test_resume_with_another_seq_len_continues_after_the_block_being_read(prepared):
    from cpt_jax.data.pipeline import block_rows

    pipe = make_pipe(prepared, batch=4)
    it = pipe.train_iterator({"replay": 1.0})
    list(_take(it, 3))
    state = it.state()  # 12 rows read: inside the first block, whose other rows are still unread
    width = block_rows(pipe._streams["replay"].epoch_tokens, SEQ)
    assert 12 < width
    longer = make_pipe(prepared, batch=4, seq=2 * SEQ).resume(state)
    after = longer.state()
    assert after["tokens"]["replay"] == after["origin"]["replay"] == width * SEQ and after["seq_len"] == 2 * SEQ
    batch = next(longer)  # a fresh block grid after the first block: nothing of it is read twice
    want = longer._cursor.streams["replay"].read(width * SEQ, 2 * SEQ)["tokens"]
    np.testing.assert_array_equal(batch["tokens"][0], want)


def test_synthetic_documents_read_by_slice():
    from cpt_jax.data.synthetic import SyntheticDocs

    docs = SyntheticDocs(64, 5, 40, 300, seed=3, split="train")
    for i in range(5):
        whole, n = docs[i], int(docs.lengths[i])
        assert whole.size == n and whole[-1] == 0 and np.all(whole[:-1] > 0)
        for start, stop in ((0, n), (5, 17), (n - 3, n), (n - 1, n)):
            np.testing.assert_array_equal(docs.read(i, start, stop), whole[start:stop])

"""Sequence classification / regression: readers (GLUE layout and generic files), padded
batches, the task's losses and metrics, evaluation with union sparsity, CLI train + eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BERT_WORDS as WORDS
from test_encoders import tiny_bert

import lte
from lte.cli import main
from lte.glue import (
    ClassificationData,
    Examples,
    SequenceClassificationTask,
    TaskError,
    compute_metrics,
    glue_split,
    label_names,
    parse_task,
    read_rows,
)
from lte.sparsify import lte_layers

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "RTE" / "dev.tsv").is_file(), reason=f"GLUE data not found at {GLUE}")

# ----------------------------------------------------------------------------- readers
@needs_glue
@pytest.mark.parametrize("task,split,rows,first_label", [
    ("glue:sst2", "dev", 872, "1"), ("glue:cola", "dev", 1043, "1"), ("glue:cola", "train", 8551, "1"),
    ("glue:mrpc", "dev", 408, "1"), ("glue:mrpc", "train", 3668, "1"), ("glue:rte", "dev", 277, "not_entailment"),
    ("glue:stsb", "dev", 1500, "5.000"), ("glue:qnli", "train", 4463, "entailment"),
    ("glue:qnli", "dev", 1000, None),
])
def test_glue_readers_match_the_data_readme(task, split, rows, first_label):
    spec = parse_task(task)
    ex = glue_split(GLUE, spec, split)
    assert len(ex) == rows
    if first_label is not None:
        assert ex.label[0] == first_label
    assert (ex.text_pair is not None) == (spec.text_pair is not None)
    assert not ex.text[0].startswith("\ufeff") and ex.text[0].strip()
    from lte.glue import encode_labels
    y = encode_labels(ex, spec)
    assert y.dtype == (torch.float32 if spec.regression else torch.long) and len(y) == rows


@needs_glue
def test_glue_reader_details():
    mrpc = glue_split(GLUE, parse_task("glue:mrpc"), "dev")  # BOM-prefixed header still finds "Quality"
    assert mrpc.text[0].startswith("He said the foodservice pie") and mrpc.text_pair[0].startswith('" The foodservice')
    cola = glue_split(GLUE, parse_task("glue:cola"), "dev")  # no header: the first row is data
    assert cola.text[0] == "The sailors rode the breeze clear of the rocks."
    assert glue_split(GLUE / "RTE", parse_task("glue:rte"), "dev").label == glue_split(
        GLUE, parse_task("GLUE:RTE"), "dev").label  # the task folder itself works too
    with pytest.raises(TaskError, match="unknown GLUE task"):
        parse_task("glue:mnli")
    with pytest.raises(TaskError, match="GLUE layout"):
        glue_split(GLUE.parent / "wikitext-2", parse_task("glue:rte"), "dev")


def test_generic_tsv_csv_jsonl(tmp_path):
    (tmp_path / "d.tsv").write_text('text\tother\tlabel\nsays "hi\tx\tpos\nfine\ty\tneg\n')
    (tmp_path / "d.csv").write_text('text,label\n"a, b",pos\nc,neg\n')
    (tmp_path / "d.jsonl").write_text('{"q": "one", "a": "two", "y": 2}\n\n{"q": "three", "a": "four", "y": 10}\n')
    tsv = read_rows(tmp_path / "d.tsv", parse_task("classification", text_field="text"))
    assert tsv.text == ['says "hi', "fine"] and tsv.label == ["pos", "neg"]  # unbalanced quote kept as is
    assert read_rows(tmp_path / "d.csv", parse_task("classification")).text == ["a, b", "c"]
    js = read_rows(tmp_path / "d.jsonl", parse_task("classification", "q", "a", "y"))
    assert js.text_pair == ["two", "four"] and label_names(js, False) == ("2", "10")  # numeric order
    assert label_names(tsv, False) == ("neg", "pos") and label_names(tsv, True) is None
    with pytest.raises(TaskError, match="no column 'sentence'"):
        read_rows(tmp_path / "d.tsv", parse_task("classification", text_field="sentence"))
    with pytest.raises(TaskError, match="no 'label' field"):
        read_rows(tmp_path / "d.jsonl", parse_task("classification", "q"))
    (tmp_path / "bom.jsonl").write_text('\ufeff{"text": "x", "label": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bom.jsonl:2: expected a JSON object"):  # line 1 read despite the BOM
        read_rows(tmp_path / "bom.jsonl", parse_task("classification"))
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": 1}\n{"text": \n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl", parse_task("classification"))
    with pytest.raises(TaskError, match="unknown classification task"):
        parse_task("summarisation")
    from lte.glue import encode_labels
    with pytest.raises(TaskError, match="not a number"):
        encode_labels(tsv, parse_task("regression"))


# ----------------------------------------------------------------------------- data, task
def _examples(n: int = 12, pair: bool = False, regression: bool = False) -> Examples:
    g = torch.Generator().manual_seed(0)
    text = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(k),), generator=g))
            for k in torch.randint(1, 9, (n,), generator=g)]
    labels = [f"{float(v):.2f}" for v in torch.rand(n, generator=g) * 5] if regression else \
        [str(int(v)) for v in torch.randint(0, 3, (n,), generator=g)]
    return Examples(text, list(reversed(text)) if pair else None, labels, "synthetic")


def test_batches_pad_to_the_longest_and_mask_padding(bert_tokenizer):
    ex = _examples(pair=True)
    spec = parse_task("classification", text_pair_field="b", labels=("0", "1", "2"))
    data = ClassificationData(ex, bert_tokenizer, spec, max_length=16)
    b = data.batch(torch.tensor([0, 3, 5]))
    lengths = [len(data.input_ids[i]) for i in (0, 3, 5)]
    assert b["input_ids"].shape == (3, max(lengths)) and b["attention_mask"].sum(1).tolist() == lengths
    assert (b["input_ids"][b["attention_mask"] == 0] == bert_tokenizer.pad_token_id).all()
    assert b["token_type_ids"].max() == 1  # the second text of a pair
    assert b["labels"].tolist() == [int(ex.label[i]) for i in (0, 3, 5)]
    assert max(len(x) for x in data.input_ids) <= 16


def test_losses_and_distillation():
    cls = SequenceClassificationTask(parse_task("glue:rte"))
    logits = torch.randn(4, 2)
    batch = {"labels": torch.tensor([0, 1, 1, 0])}
    assert torch.allclose(cls.loss(logits, batch), F.cross_entropy(logits, batch["labels"]))
    assert cls.distill(logits, logits, batch, 2.0).abs() < 1e-6
    assert cls.distill(logits, torch.randn(4, 2), batch, 1.0) > 0
    reg = SequenceClassificationTask(parse_task("glue:stsb"))
    y = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(reg.loss(torch.tensor([[1.0], [2.0], [5.0]]), {"labels": y}), torch.tensor(4 / 3))
    assert torch.allclose(reg.distill(torch.ones(3, 1), torch.zeros(3, 1), {}, 1.0), torch.tensor(1.0))
    assert set(cls.model_inputs({"input_ids": 1, "attention_mask": 2, "labels": 3})) == {"input_ids", "attention_mask"}


def test_metrics_from_the_libraries():
    y, p = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 0, 0, 1])
    m = compute_metrics(parse_task("glue:mrpc"), p, y)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)  # P = 1, R = 2/3
    assert compute_metrics(parse_task("glue:cola"), y, y)["matthews_correlation"] == pytest.approx(1.0)
    assert compute_metrics(parse_task("glue:cola"), 1 - y, y)["matthews_correlation"] == pytest.approx(-1.0)
    s = compute_metrics(parse_task("glue:stsb"), torch.tensor([1.0, 2.0, 3.0, 10.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert s["spearman"] == pytest.approx(1.0) and 0.8 < s["pearson"] < 1.0


def test_evaluate_reports_sparsity_over_real_tokens_and_union(bert_tokenizer):
    model = tiny_bert(num_labels=3)
    ex = _examples(n=10)
    spec = parse_task("classification", labels=("0", "1", "2"))
    data = ClassificationData(ex, bert_tokenizer, spec, max_length=16)
    task = SequenceClassificationTask(spec)
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    dense = task.evaluate(model, data, batch_size=4)
    assert dense["ffn_sparsity"] == 0.0 and dense["union_sparsity"] == 0.0 and dense["mode"] == "dense"
    assert dense["tokens"] == sum(len(x) for x in data.input_ids) and dense["examples"] == 10
    lte.set_mode(model, "hard")
    res = task.evaluate(model, data, batch_size=4)
    assert res["metric"] == "accuracy" and res["score"] == res["accuracy"]
    assert 0.1 < res["ffn_sparsity"] < 0.9 and res["gflops_per_token"] < dense["gflops_per_token"]
    # union sparsity by hand: per layer and batch, experts chosen by no real token
    expect = []
    for layer in lte_layers(model):
        xs = []
        h = layer.register_forward_hook(lambda m, a, o, xs=xs: xs.append(a[0]))
        for b in range(0, 10, 4):
            batch = data.batch(torch.arange(b, min(b + 4, 10)))
            with torch.no_grad():
                model(**task.model_inputs(batch))
            sel = (layer.router.logits(xs[-1]) > layer.logit_threshold)[batch["attention_mask"].bool()]
            expect.append(1 - sel.any(0).float().mean().item())
        h.remove()
    assert res["union_sparsity"] == pytest.approx(sum(expect) / len(expect))
    assert res["union_sparsity"] <= res["ffn_sparsity"]
    # padding does not count: the same examples one by one give the same per-token sparsity
    one = task.evaluate(model, data, batch_size=1)
    assert one["ffn_sparsity"] == pytest.approx(res["ffn_sparsity"]) and one["tokens"] == res["tokens"]
    assert one["union_sparsity"] >= res["union_sparsity"]


# ----------------------------------------------------------------------------- end to end
def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_cli_train_and_eval_generic_classification(tmp_path, tiny_bert_dir, capsys):
    rows = ["sentence\tlabel"] + [f"{t}\t{'pos' if 'good' in t or 'great' in t else 'neg'}"
                                  for t in _examples(n=40).text]
    (tmp_path / "train.tsv").write_text("\n".join(rows[:33]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join([rows[0]] + rows[33:]) + "\n")
    out = tmp_path / "run"
    _run(["train", "--task", "classification", "--model", str(tiny_bert_dir), "--data", str(tmp_path / "train.tsv"),
          "--val-data", str(tmp_path / "dev.tsv"), "--text-field", "sentence", "--out", str(out),
          "--target-sparsity", "0.5", "--stage1-steps", "6", "--stage2-steps", "3", "--batch-size", "4",
          "--expert-size", "16", "--lr", "1e-3", "--eval-every", "3", "--no-progress", "--device", "cpu"], capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["train_examples"] == 32 and summary["dev_examples"] == 8
    assert summary["dev_mode"] == "hard" and 0 < summary["dev_ffn_sparsity"] < 1
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and "accuracy" in r for r in evals)
    printed = json.loads(_run(["eval", str(out / "model"), "--task", "classification", "--data",
                               str(tmp_path / "dev.tsv"), "--text-field", "sentence", "--json", "--no-progress",
                               "--batch-size", "8", "--device", "cpu"], capsys))
    for k in ("accuracy", "ffn_sparsity", "union_sparsity", "gflops_per_token", "tokens"):
        assert k in printed
    assert printed["accuracy"] == pytest.approx(summary["dev_accuracy"])
    assert printed["ffn_sparsity"] == pytest.approx(summary["dev_ffn_sparsity"])
    loaded = lte.load(out / "model")
    assert loaded.config.id2label == {0: "neg", 1: "pos"}
    again, _ = lte.load_model(str(out / "model"), task="sequence-classification")  # no num_labels needed
    assert type(again).__name__ == "BertForSequenceClassification" and lte.get_mode(again) == "hard"


@needs_glue
def test_cli_glue_rte_train_eval_and_errors(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "rte"
    summary = json.loads(_run(
        ["train", "--task", "glue:rte", "--model", str(tiny_bert_dir), "--data", str(GLUE), "--out", str(out),
         "--target-sparsity", "0.5", "--stage1-steps", "2", "--stage2-steps", "1", "--batch-size", "16",
         "--seq-len", "16", "--expert-size", "16", "--no-progress", "--device", "cpu"], capsys))
    assert summary["train_examples"] == 2490 and summary["dev_examples"] == 277 and summary["seq_len"] == 16
    assert summary["dev_metric"] == "accuracy" and math.isfinite(summary["dev_score"])
    text = _run(["eval", str(out / "model"), "--task", "glue:rte", "--data", str(GLUE), "--no-progress",
                 "--batch-size", "32", "--device", "cpu"], capsys)
    assert text.startswith("glue:rte: accuracy") and "union_sparsity" in text
    rc = main(["eval", str(out / "model"), "--task", "glue:stsb", "--data", str(GLUE), "--device", "cpu"])
    assert rc == 2 and "1 label(s) but the model has 2" in capsys.readouterr().err
    rc = main(["eval", str(out / "model"), "--task", "glue:mnli", "--data", str(GLUE), "--device", "cpu"])
    assert rc == 2 and "unknown GLUE task" in capsys.readouterr().err

"""SFT data: Alpaca/chat formatting, exact label masks, padded and packed batches, the held-out
split, response perplexity, and ``lte train/eval --task sft`` on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lte
from lte.cli import main
from lte.sft import (
    IGNORE,
    SFTTask,
    alpaca_prompt,
    build_sft_data,
    encode_records,
    format_segments,
    load_records,
    load_sft_splits,
    record_kind,
    response_perplexity,
    split_records,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_tokenizer(bos: bool = True):
    """A small byte-level BPE tokenizer built in memory (offline, fast); BOS prepended by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    corpus = ["Answer: A", "Answer: B", "Answer: C", "Answer: D", " A B C D"] * 50 + [
        "The following are multiple choice questions (with answers) about abstract algebra.",
        alpaca_prompt("Say", "input"), alpaca_prompt("Say"),
        "Meaning representation: name[The Vaults], eatType[pub] Description: The Vaults is a pub."] * 20
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_lm(tok, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def save_tiny(tmp_path: Path, tok, name: str = "base") -> Path:
    d = tmp_path / name
    tiny_lm(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def cli_train_tiny(capsys, task: str, base: Path, data: Path, out: Path, seq_len: int) -> dict:
    """``lte train --task TASK`` on a tiny model with a few steps; returns the printed summary."""
    code = main(["train", "--task", task, "--model", str(base), "--data", str(data), "--out", str(out),
                 "--target-sparsity", "0.5", "--stage1-steps", "3", "--stage2-steps", "2", "--batch-size", "4",
                 "--seq-len", str(seq_len), "--expert-size", "16", "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return json.loads(printed.out)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


# ----------------------------------------------------------------------------- formatting
def test_alpaca_prompts_are_the_exact_strings():
    assert alpaca_prompt("Add 2 and 3.", "numbers") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n"
        "### Input:\nnumbers\n\n### Response:")
    assert alpaca_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:")
    assert alpaca_prompt("Say hi.", "") == alpaca_prompt("Say hi.")


def test_record_kinds_format_alike(tok):
    a = {"instruction": "Say hi.", "input": "", "output": "hi"}
    p = {"prompt": "Say hi.", "response": "hi"}
    m = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
    assert [record_kind(r) for r in (a, p, m)] == ["alpaca", "prompt", "messages"]
    want = [(alpaca_prompt("Say hi."), False), ("hi<eos>", True)]
    for r in (a, p, m):
        assert format_segments(r, tok) == want
    with pytest.raises(ValueError, match="expected instruction"):
        record_kind({"text": "x"})
    with pytest.raises(ValueError, match="chat template"):
        format_segments({"messages": m["messages"] * 2}, tok)


def test_labels_cover_exactly_output_plus_eos(tok):
    rec = {"instruction": "Add 2 and 3.", "input": "numbers", "output": "The answer is 5."}
    [(ids, labels)], dropped = encode_records([rec], tok, "alpaca", max_len=None)
    assert dropped == 0
    prompt_ids = tok(alpaca_prompt("Add 2 and 3.", "numbers"), add_special_tokens=False)["input_ids"]
    out_ids = tok("The answer is 5.", add_special_tokens=False)["input_ids"]
    assert ids == [tok.bos_token_id] + prompt_ids + out_ids + [tok.eos_token_id]
    assert labels == [IGNORE] * (1 + len(prompt_ids)) + out_ids + [tok.eos_token_id]
    assert tok.decode([t for t in labels if t != IGNORE]) == "The answer is 5.<eos>"


def test_no_bos_tokenizer_gets_none(tok):
    t2 = tiny_tokenizer(bos=False)
    [(ids, _)], _ = encode_records([{"prompt": "x", "response": "y"}], t2, max_len=None)
    assert ids[0] != t2.bos_token_id


def test_chat_template_masks_every_assistant_turn(tok):
    tok.chat_template = CHAT_TEMPLATE
    try:
        rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                            {"role": "assistant", "content": "Ciao"}]}
        segs = format_segments(rec, tok, "chat")
        assert segs == [("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", False),
                        ("Hello<|end|>\n", True), ("<|user|>\nBye<|end|>\n<|assistant|>\n", False),
                        ("Ciao<|end|>\n<eos>", True)]
        assert "".join(s for s, _ in segs) == tok.apply_chat_template(rec["messages"], tokenize=False) + "<eos>"
        [(ids, labels)], _ = encode_records([rec], tok, "chat", max_len=None)
        assert ids[0] != tok.bos_token_id  # the template renders its own specials
        targets = tok.decode([t for t in labels if t != IGNORE])
        assert targets == "Hello<|end|>\nCiao<|end|>\n<eos>"
        # alpaca records through the chat template: instruction + input as the user turn
        segs = format_segments({"instruction": "Do", "input": "this", "output": "done"}, tok, "chat")
        assert segs == [("<|user|>\nDo\n\nthis<|end|>\n<|assistant|>\n", False), ("done<|end|>\n<eos>", True)]
    finally:
        tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_segments(rec, tok, "chat")


def test_truncation_and_dropping(tok):
    recs = [{"prompt": "word " * 50, "response": "yes"}, {"prompt": "hi", "response": "long answer " * 20}]
    n = 1 + len(tok(alpaca_prompt("hi"), add_special_tokens=False)["input_ids"]) + 5
    exs, dropped = encode_records(recs, tok, max_len=n)
    assert dropped == 1 and len(exs) == 1  # the first prompt alone fills n tokens
    ids, labels = exs[0]
    assert len(ids) == n and labels[-6] == IGNORE and labels[-5] != IGNORE  # response cut at the end
    assert tok.eos_token_id not in ids


# ----------------------------------------------------------------------------- data + loss
def test_padded_batch_and_loss_on_responses_only(tok):
    recs = [{"prompt": "a b c d e f", "response": "x"}, {"prompt": "q", "response": "a longer response here"}]
    data = build_sft_data(recs, tok, max_len=64)
    b = data.batch(torch.tensor([0, 1]))
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    lens = b["attention_mask"].sum(1).tolist()
    for r, n in enumerate(lens):  # right padding: pads after the example, labels -100 there
        assert (b["input_ids"][r, n:] == tok.pad_token_id).all() and (b["labels"][r, n:] == IGNORE).all()
        assert b["attention_mask"][r, :n].all()
    model = tiny_lm(tok)
    task = SFTTask()
    with torch.no_grad():
        logits = model(**task.model_inputs(b)).logits
    loss = task.loss(logits, b)
    # manual: mean CE over response tokens of both examples
    nll, cnt = 0.0, 0
    for r in range(2):
        for pos in range(1, lens[r]):
            lab = int(b["labels"][r, pos])
            if lab != IGNORE:
                nll += float(F.cross_entropy(logits[r, pos - 1:pos], torch.tensor([lab])))
                cnt += 1
    assert cnt == data.target_tokens
    assert abs(float(loss) - nll / cnt) < 1e-5


def test_packed_blocks(tok):
    recs = [{"prompt": f"p{i}", "response": f"r{i} " * 3} for i in range(20)]
    data = build_sft_data(recs, tok, max_len=16, packed=True)
    b = data.batch(torch.arange(len(data)))
    assert b["input_ids"].shape == (len(data), 16) and "attention_mask" not in b
    exs, _ = encode_records(recs, tok, max_len=None)
    flat = [t for e, _ in exs for t in e]
    flat_labels = [t for _, lb in exs for t in lb]
    assert len(data) == len(flat) // 16
    assert b["input_ids"].reshape(-1).tolist() == flat[: len(data) * 16]
    assert b["labels"].reshape(-1).tolist() == flat_labels[: len(data) * 16]


def test_held_out_is_the_last_five_percent():
    recs = list(range(9229))
    train, val = split_records(recs)
    assert len(val) == 462 and val[0] == 9229 - 462 and train == list(range(9229 - 462))


def test_load_records_json_and_jsonl(tmp_path):
    recs = [{"instruction": f"i{k}", "input": "", "output": f"o{k}"} for k in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert load_records(tmp_path / "a.json") == recs == load_records(tmp_path / "a.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(ValueError, match="record 0"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=".json or .jsonl"):
        load_records(tmp_path / "a.txt")


def test_response_perplexity_is_padding_invariant(tok):
    recs = [{"prompt": "q " * (k + 1), "response": "answer " * (3 + 2 * k)} for k in range(5)]
    data = build_sft_data(recs, tok, max_len=128)
    model = tiny_lm(tok)
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    lte.set_mode(model, "hard")
    batched = response_perplexity(model, data, batch_size=5)
    one = response_perplexity(model, data, batch_size=1)
    assert abs(batched["perplexity"] - one["perplexity"]) < 1e-3 * one["perplexity"]
    assert batched["tokens"] == data.target_tokens
    assert abs(batched["ffn_sparsity"] - one["ffn_sparsity"]) < 1e-6  # padding is not counted


@pytest.mark.skipif(not (SHARED / "instructions" / "alpaca_random_9k.json").is_file(), reason="shared data absent")
def test_real_alpaca_file_splits_462(tok):
    recs = load_records(SHARED / "instructions" / "alpaca_random_9k.json")
    assert len(recs) == 9229 and all(record_kind(r) == "alpaca" for r in recs)
    train, val = split_records(recs)
    assert len(val) == 462 and val[-1] == recs[-1]


# ----------------------------------------------------------------------------- CLI
def test_cli_train_and_eval_sft(tmp_path, capsys, tok):
    base = save_tiny(tmp_path, tok)
    recs = [{"instruction": f"Repeat {k}.", "input": "" if k % 2 else "twice", "output": f"{k} {k}"}
            for k in range(60)]
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(recs))
    summary = cli_train_tiny(capsys, "sft", base, data, tmp_path / "run", 96)
    assert summary["task"] == "sft" and summary["train_examples"] == 57 and summary["val_examples"] == 3
    assert summary["val_perplexity"] > 1
    code = main(["eval", str(tmp_path / "run" / "model"), "--task", "sft", "--data", str(data), "--json",
                 "--no-progress", "--device", "cpu", "--seq-len", "96"])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert set(res) == {"perplexity", "ffn_sparsity", "gflops_per_token", "tokens"}
    assert abs(res["perplexity"] - summary["val_perplexity"]) < 1e-3 * res["perplexity"]
    # packed training also runs
    code = main(["train", "--task", "sft", "--packed", "--model", str(base), "--data", str(data), "--out",
                 str(tmp_path / "run2"), "--target-sparsity", "0.5", "--stage1-steps", "2", "--stage2-steps", "1",
                 "--batch-size", "2", "--seq-len", "64", "--expert-size", "16", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err


def test_load_sft_splits_with_val_file(tmp_path, tok):
    recs = [{"prompt": f"p{k}", "response": f"r{k}"} for k in range(10)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(r) for r in recs[:2]))
    tr, va = load_sft_splits(tmp_path / "t.jsonl", tok, max_len=128, val_path=tmp_path / "v.jsonl")
    assert len(tr) == 10 and len(va) == 2
    tr, va = load_sft_splits(tmp_path / "t.jsonl", tok, max_len=128)
    assert len(tr) == 9 and len(va) == 1

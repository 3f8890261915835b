"""MMLU 5-shot: the prompt exactly as ../shared/data/README.md specifies, left-padded batching
equal to one-by-one scoring, accuracy bookkeeping, truncation, and ``lte eval --task mmlu``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from test_sft import save_tiny, tiny_lm, tiny_tokenizer

import lte
from lte.cli import main
from lte.mmlu import (
    build_prompt,
    choice_token_ids,
    evaluate_mmlu,
    next_token_logits,
    read_questions,
    subjects,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

DEV = [["What is 1+1?", "1", "2", "3", "4", "B"],
       ["Pick the group, with a comma", "Z", "N", "Q+", "none", "A"],
       ['A "quoted"\nmulti-line question', "x", "y", "z", "w", "D"],
       ["Q4", "a", "b", "c", "d", "C"],
       ["Q5", "a", "b", "c", "d", "A"]]


def make_mmlu(root: Path, n_test: int = 6) -> Path:
    """A fake MMLU folder: two subjects, 5 dev and ``n_test`` test questions each."""
    for split in ("dev", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for subj in ("abstract_algebra", "world_religions"):
        with (root / "dev" / f"{subj}_dev.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows(DEV)
        with (root / "test" / f"{subj}_test.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([[f"Test {subj} {i}" + " long" * (i % 3), "p", "q", "r", "s", "ABCD"[i % 4]]
                                      for i in range(n_test)])
    (root / "test" / "orphan_test.csv").write_text("q,a,b,c,d,A\n")  # no dev file: not a subject
    return root


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_prompt_is_exactly_the_protocol(tmp_path):
    root = make_mmlu(tmp_path)
    assert subjects(root) == ["abstract_algebra", "world_religions"]
    shots = read_questions(root / "dev" / "abstract_algebra_dev.csv")
    assert shots[2].question == 'A "quoted"\nmulti-line question' and shots[1].question == "Pick the group, with a comma"
    q = read_questions(root / "test" / "abstract_algebra_test.csv")[1]
    want = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
            "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
            "Pick the group, with a comma\nA. Z\nB. N\nC. Q+\nD. none\nAnswer: A\n\n"
            'A "quoted"\nmulti-line question\nA. x\nB. y\nC. z\nD. w\nAnswer: D\n\n'
            "Q4\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
            "Q5\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
            "Test abstract_algebra 1 long\nA. p\nB. q\nC. r\nD. s\nAnswer:")
    assert build_prompt("abstract_algebra", shots, q) == want
    assert build_prompt("world_religions", shots, q, k=0) == (
        "The following are multiple choice questions (with answers) about world religions.\n\n"
        "Test abstract_algebra 1 long\nA. p\nB. q\nC. r\nD. s\nAnswer:")


def test_choice_tokens(tok):
    ids = choice_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == [" A", " B", " C", " D"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_batch_scores_like_one_by_one(tok, family):
    if family == "llama":
        model = tiny_lm(tok)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    lte.set_mode(model, "hard")
    prompts = [tok(t)["input_ids"] for t in ["Answer:", "What is 1+1?\nA. 1\nAnswer:", "x y z w v u t s r Answer:"]]
    batched = next_token_logits(model, prompts, tok.pad_token_id, torch.device("cpu"))
    for i, p in enumerate(prompts):
        single = next_token_logits(model, [p], tok.pad_token_id, torch.device("cpu"))
        assert torch.allclose(batched[i], single[0], atol=1e-4), (i, (batched[i] - single[0]).abs().max())


def _manual_predictions(model, tok, root, limit=None):
    ids = choice_token_ids(tok)
    preds = {}
    for s in subjects(root):
        shots = read_questions(root / "dev" / f"{s}_dev.csv")
        for i, q in enumerate(read_questions(root / "test" / f"{s}_test.csv")[:limit]):
            x = torch.tensor([tok(build_prompt(s, shots, q))["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, -1]
            preds[(s, i)] = "ABCD"[int(logits[ids].argmax())]
    return preds


def test_accuracy_matches_one_by_one_scoring(tmp_path, tok):
    root = make_mmlu(tmp_path, n_test=7)
    model = tiny_lm(tok)
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    lte.set_mode(model, "dense")
    manual = _manual_predictions(model, tok, root)
    res = evaluate_mmlu(model, tok, root, batch_size=3, progress=False)
    assert res["questions"] == 14 and res["subjects"] == 2 and res["truncated_prompts"] == 0
    got = {(p["subject"], p["index"]): p["prediction"] for p in res["predictions"]}
    assert got == manual
    answers = {(p["subject"], p["index"]): p["answer"] for p in res["predictions"]}
    correct = {s: sum(got[k] == answers[k] for k in got if k[0] == s) for s in subjects(root)}
    assert res["accuracy"] == pytest.approx(sum(correct.values()) / 14)
    assert res["accuracy_macro"] == pytest.approx(sum(c / 7 for c in correct.values()) / 2)
    for s, c in correct.items():
        assert res["per_subject"][s]["correct"] == c and res["per_subject"][s]["questions"] == 7
    assert res["ffn_sparsity"] == 0.0 and res["gflops_per_token"] > 0 and res["tokens"] > 0


def test_micro_and_macro_differ_with_unequal_subjects(tmp_path, tok, monkeypatch):
    """An oracle scorer (always the right letter on one subject, always wrong on the other)."""
    root = make_mmlu(tmp_path, n_test=4)
    with (root / "test" / "world_religions_test.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows([["extra", "p", "q", "r", "s", "A"]] * 4)  # 8 questions
    import lte.mmlu as mm
    model = tiny_lm(tok)
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    ids = choice_token_ids(tok)

    real = mm.next_token_logits

    def oracle(model, batch_ids, pad_id, device):
        out = real(model, batch_ids, pad_id, device) * 0  # run the model (sparsity stats), then decide

        for r, x in enumerate(batch_ids):
            text = tok.decode(x)
            q = text.rsplit("\n\n", 1)[-1]
            m = re.match(r"Test abstract_algebra (\d+)", q)
            letter = "ABCD"[int(m.group(1)) % 4] if m else "D"
            out[r, ids["ABCD".index(letter)]] = 1.0
        return out
    monkeypatch.setattr(mm, "next_token_logits", oracle)
    res = evaluate_mmlu(model, tok, root, batch_size=2, progress=False)
    assert res["per_subject"]["abstract_algebra"]["accuracy"] == 1.0
    assert res["per_subject"]["world_religions"]["accuracy"] == pytest.approx(1 / 8)  # only "Test ... 3" is D
    assert res["accuracy"] == pytest.approx(5 / 12)
    assert res["accuracy_macro"] == pytest.approx((1 + 1 / 8) / 2)


def test_limit_subjects_and_truncation(tmp_path, tok):
    root = make_mmlu(tmp_path)
    model = tiny_lm(tok)
    res = evaluate_mmlu(lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False), tok, root, limit=2,
                        subject_names=["world_religions"], progress=False)
    assert res["questions"] == 2 and list(res["per_subject"]) == ["world_religions"]
    with pytest.raises(ValueError, match="unknown MMLU subject"):
        evaluate_mmlu(model, tok, root, subject_names=["nope"], progress=False)
    shots = read_questions(root / "dev" / "world_religions_dev.csv")
    q = read_questions(root / "test" / "world_religions_test.csv")[0]
    n2 = len(tok(build_prompt("world_religions", shots, q, k=2))["input_ids"])
    res = evaluate_mmlu(model, tok, root, limit=1, subject_names=["world_religions"], max_length=n2, progress=False)
    assert res["truncated_prompts"] == 1 and res["per_subject"]["world_religions"]["max_prompt_tokens"] == n2
    res = evaluate_mmlu(model, tok, root, limit=1, subject_names=["world_religions"], max_length=5, progress=False)
    assert res["truncated_prompts"] == 1 and res["per_subject"]["world_religions"]["max_prompt_tokens"] == 5


def test_cli_eval_mmlu(tmp_path, capsys, tok):
    root = make_mmlu(tmp_path / "mmlu")
    base = save_tiny(tmp_path, tok)
    code = main(["eval", str(base), "--task", "mmlu", "--data", str(root), "--json", "--limit", "3", "--no-progress",
                 "--device", "cpu", "--out", str(tmp_path / "res")])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert {"accuracy", "ffn_sparsity", "gflops_per_token", "tokens", "accuracy_macro", "per_subject"} <= set(res)
    assert res["questions"] == 6 and 0 <= res["accuracy"] <= 1 and res["chance"] == 0.25
    assert (tmp_path / "res" / "mmlu.json").is_file()
    code = main(["eval", str(base), "--task", "mmlu", "--data", str(tmp_path / "nope"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lte: error:")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mmlu" / "test").is_dir(), reason="shared MMLU data absent")
def test_smollm2_mmlu_two_subjects(smol_model):
    model, tok = smol_model
    res = evaluate_mmlu(model, tok, SHARED / "mmlu", limit=1, subject_names=["abstract_algebra", "marketing"],
                        batch_size=1, progress=False)
    assert res["questions"] == 2 and res["truncated_prompts"] == 0
    assert all(p["prediction"] in "ABCD" for p in res["predictions"])

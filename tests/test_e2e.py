"""E2E NLG: reading and grouping by MR, target masks, multi-reference BLEU/ROUGE-L on hand-made
examples, batched generation equal to one-by-one, and ``lte train/eval --task e2e``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_sft import cli_train_tiny, save_tiny, tiny_lm, tiny_tokenizer

import lte
from lte.cli import main
from lte.e2e import encode_pairs, evaluate_e2e, generate_batch, group_by_mr, prompt, read_pairs, score
from lte.sft import IGNORE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

ROWS = [("name[The Vaults], eatType[pub]", "The Vaults is a pub."),
        ("name[Aromi], food[Italian]", "Aromi serves Italian food."),
        ("name[The Vaults], eatType[pub]", "There is a pub called The Vaults."),
        ("name[Cotto], area[riverside]", "Cotto is by the riverside."),
        ("name[The Vaults], eatType[pub]", "The Vaults, a pub."),
        ("name[Aromi], food[Italian]", "Italian food is served at Aromi, which has a \"nice\" view, and more.")]


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["mr", "ref"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_read_and_group(tmp_path):
    rows = read_pairs(write_csv(tmp_path / "t.csv", ROWS))
    assert rows == ROWS
    groups = group_by_mr(rows)
    assert [mr for mr, _ in groups] == ["name[The Vaults], eatType[pub]", "name[Aromi], food[Italian]",
                                        "name[Cotto], area[riverside]"]
    assert groups[0][1] == ["The Vaults is a pub.", "There is a pub called The Vaults.", "The Vaults, a pub."]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="mr,ref"):
        read_pairs(tmp_path / "bad.csv")


@pytest.mark.skipif(not (SHARED / "e2e" / "testset_w_refs.csv").is_file(), reason="shared E2E data absent")
def test_real_test_set_has_630_mrs():
    rows = read_pairs(SHARED / "e2e" / "testset_w_refs.csv")
    groups = group_by_mr(rows)
    assert len(rows) == 4693 and len(groups) == 630 and sum(len(r) for _, r in groups) == 4693


def test_target_is_reference_plus_eos(tok):
    [(ids, labels)], dropped = encode_pairs(ROWS[:1], tok, max_len=None)
    p = tok(prompt(ROWS[0][0]), add_special_tokens=False)["input_ids"]
    t = tok(" " + ROWS[0][1], add_special_tokens=False)["input_ids"]
    assert dropped == 0 and ids == [tok.bos_token_id] + p + t + [tok.eos_token_id]
    assert labels == [IGNORE] * (1 + len(p)) + t + [tok.eos_token_id]
    assert prompt("name[X]") == "Meaning representation: name[X]\nDescription:"


def test_scores_on_hand_made_examples():
    import sacrebleu
    refs = [["the cat sat on the mat", "a dog"], ["hello there world"]]
    long_refs = [["the cat sat on the mat", "a big brown dog runs"], ["hello there big wide world"]]
    perfect = score(["a big brown dog runs", "hello there big wide world"], long_refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rouge_l"] == pytest.approx(1.0)
    # ROUGE-L: max F over references. "the cat sat" vs ref 1: LCS 3, P 1, R 1/2 -> F 2/3; vs ref 2: 0.
    # "hello world" vs "hello there world": LCS 2, P 1, R 2/3 -> F 0.8.
    s = score(["the cat sat", "hello world"], refs)
    assert s["rouge_l"] == pytest.approx((2 / 3 + 0.8) / 2)
    # BLEU: sacrebleu corpus BLEU with a missing second reference for the second hypothesis
    want = sacrebleu.corpus_bleu(["the cat sat", "hello world"],
                                 [["the cat sat on the mat", "hello there world"], ["a dog", None]]).score
    assert s["bleu"] == pytest.approx(want)
    # more references never lower BLEU
    one = score(["the cat sat", "hello world"], [["a dog"], ["hello there world"]])
    assert s["bleu"] >= one["bleu"]
    assert "13a" in s["bleu_signature"] and "rouge-score" in s["scorer"]
    with pytest.raises(ValueError):
        score(["x"], [[]])


def test_batched_generation_equals_one_by_one(tok):
    model = tiny_lm(tok, seed=3)
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    lte.set_mode(model, "hard")
    prompts = [prompt(mr) for mr, _ in group_by_mr(ROWS)] + ["Meaning representation: x\nDescription:"]
    batched, n_new, secs, n_prompt = generate_batch(model, tok, prompts, max_new_tokens=8, batch_size=4,
                                                    progress=False)
    single = [generate_batch(model, tok, [p], max_new_tokens=8, batch_size=1, progress=False)[0][0] for p in prompts]
    assert batched == single
    assert n_new > 0 and secs > 0 and n_prompt > 0
    beams = generate_batch(model, tok, prompts, max_new_tokens=8, num_beams=3, batch_size=2, progress=False)[0]
    assert len(beams) == len(prompts)


def test_evaluate_writes_generations_beside_scores(tmp_path, tok):
    data = tmp_path / "e2e"
    write_csv(data / "testset_w_refs.csv", ROWS)
    model = tiny_lm(tok)
    res = evaluate_e2e(model, tok, data, max_new_tokens=6, batch_size=2, out_dir=tmp_path / "out", progress=False)
    assert res["mrs"] == 3 and res["references"] == 6 and res["decoding"] == "greedy"
    assert 0 <= res["bleu"] <= 100 and 0 <= res["rouge_l"] <= 1 and res["tokens_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert [x["mr"] for x in lines] == [mr for mr, _ in group_by_mr(ROWS)]
    assert lines[0]["references"] == ["The Vaults is a pub.", "There is a pub called The Vaults.", "The Vaults, a pub."]
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["bleu"] == res["bleu"] and saved["rouge_l"] == res["rouge_l"]
    assert score([x["generation"] for x in lines], [x["references"] for x in lines])["rouge_l"] == pytest.approx(
        res["rouge_l"])
    res = evaluate_e2e(model, tok, data, decoding="beam", num_beams=2, max_new_tokens=4, limit=2, progress=False)
    assert res["mrs"] == 2 and res["num_beams"] == 2


def test_cli_train_and_eval_e2e(tmp_path, capsys, tok):
    data = tmp_path / "e2e"
    train_rows = [(f"name[R{i}], food[Italian]", f"R{i} serves Italian food.") for i in range(40)]
    write_csv(data / "trainset.csv", train_rows)
    write_csv(data / "devset.csv", ROWS[:4])
    write_csv(data / "testset_w_refs.csv", ROWS)
    base = save_tiny(tmp_path, tok)
    summary = cli_train_tiny(capsys, "e2e", base, data, tmp_path / "run", 64)
    assert summary["task"] == "e2e" and summary["train_examples"] == 40 and summary["val_examples"] == 4
    for decoding in ("greedy", "beam"):
        code = main(["eval", str(tmp_path / "run" / "model"), "--task", "e2e", "--data", str(data), "--json",
                     "--decoding", decoding, "--num-beams", "2", "--max-new-tokens", "6", "--limit", "2",
                     "--no-progress", "--device", "cpu"])
        out = capsys.readouterr()
        assert code == 0, out.err
        res = json.loads(out.out)
        assert {"bleu", "rouge_l", "ffn_sparsity", "gflops_per_token", "tokens", "tokens_per_s"} <= set(res)
        assert res["mrs"] == 2 and res["decoding"] == decoding and res["mode"] == "hard"
        assert (tmp_path / "run" / f"e2e_test_{decoding}" / "generations.jsonl").is_file()
    code = main(["eval", str(tmp_path / "run" / "model"), "--task", "e2e", "--data", str(tmp_path / "nope"),
                 "--no-progress", "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err.startswith("lte: error:")


def test_check_scorers_names_the_missing_library(monkeypatch):
    import importlib.util

    from lte import e2e
    e2e.check_scorers()  # both installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rouge_score" else real(name, *a))
    with pytest.raises(ImportError, match="pip install rouge-score"):
        e2e.check_scorers()

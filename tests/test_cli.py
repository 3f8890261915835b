"""The command line: help for every flag, one-line errors, and a real end-to-end run."""

from __future__ import annotations

import json

import pytest

from lte import TrainConfig
from lte.cli import build_parser, main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", ["train", "eval", "generate", "demo"])
def test_every_flag_has_help(cmd):
    sub = build_parser()._subparsers._group_actions[0].choices[cmd]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"lte {cmd} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("argv,msg", [
    (["train", "--data", "nope/missing.txt", "--out", "x", "--target-sparsity", "0.5"], "no such file"),
    (["eval", "nope_dir", "--data", "nope/missing.txt"], "no such file"),
    (["generate", "no-such-model", "--prompt", "hi"], "unknown model"),
    (["bench", "no-such-model", "--setups", "static,turbo"], "unknown setup"),
    (["bench", "no-such-model", "--setups", ","], "at least one"),
])
def test_bad_input_gives_one_line_error(capsys, argv, msg):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("lte: error:") and msg in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_value_is_one_line(capsys, tmp_path):
    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    code, _, err = _run(capsys, "train", "--model", str(tmp_path), "--data", str(tmp_path / "t.txt"), "--out",
                        str(tmp_path / "o"), "--target-sparsity", "1.5")
    assert code == 2 and "target_sparsity must be in (0, 1)" in err and len(err.strip().splitlines()) == 1


def test_no_command_prints_help(capsys):
    code, out, _ = _run(capsys)
    assert code == 2 and "demo" in out and "train" in out


@pytest.mark.slow
def test_train_eval_generate_end_to_end(capsys, tmp_path, smol_tokenizer):
    """lte train -> eval --json -> generate on a tiny random LLaMA with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    smol_tokenizer.save_pretrained(tmp_path / "base")
    text = tmp_path / "t.txt"
    text.write_text("".join(f"The number {i} follows {i - 1} and comes before {i + 1}.\n" for i in range(400)))
    code, out, err = _run(capsys, "train", "--model", str(tmp_path / "base"), "--data", str(text), "--out",
                          str(tmp_path / "run"), "--target-sparsity", "0.5", "--stage1-steps", "4", "--stage2-steps",
                          "2", "--batch-size", "2", "--seq-len", "32", "--expert-size", "16", "--no-progress",
                          "--device", "cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 6 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    code, out, err = _run(capsys, "eval", str(tmp_path / "run" / "model"), "--data", str(text), "--seq-len", "64",
                          "--json", "--no-progress", "--device", "cpu")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) == {"perplexity", "ffn_sparsity", "gflops_per_token", "tokens"}
    assert res["tokens"] > 0 and 0.0 <= res["ffn_sparsity"] <= 1.0
    code, out, err = _run(capsys, "generate", str(tmp_path / "run" / "model"), "--prompt", "The number",
                          "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0, err
    assert "FFN sparsity" in out


def test_train_flags_reach_the_train_config():
    from lte.pipeline import build_configs

    a = build_parser().parse_args(["train", "--data", "t.txt", "--out", "o", "--target-sparsity", "0.5",
                                   "--router-lr", "0.03", "--stage2-bias-gain", "0.7"])
    _, tcfg = build_configs(a)
    assert (tcfg.router_lr, tcfg.stage2_bias_gain, tcfg.target_sparsity) == (0.03, 0.7, 0.5)
    _, tcfg = build_configs(build_parser().parse_args(["train", "--data", "t.txt", "--out", "o",
                                                       "--target-sparsity", "0.5"]))
    assert tcfg.stage2_bias_gain == TrainConfig().stage2_bias_gain == 1.0  # the default without the flag


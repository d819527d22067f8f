"""Does llama.cpp answer as transformers does? The exported GGUF run by llama.cpp itself.

    pip install llama-cpp-python diskcache   # compiles llama.cpp (over an hour on one core; not in CI)
    python bench/gguf_runtime.py             # the embedded SmolLM2 with a random adapter, f16 and q8_0
    python bench/gguf_runtime.py --merged DIR   # again on an export this script made (no re-export)

Builds an adapter on the embedded SmolLM2-135M with random LoRA B (a fresh adapter adds nothing
and would hide merge errors), exports it (`medbot_export.export` + `export_gguf`, f16 and q8_0),
then for three conversations compares what a llama.cpp user gets with what medbot's own
transformers path gets:
- the prompt: llama.cpp's chat formatter, fed the chat template stored in the GGUF, must render
  the same text as medbot's template (`render_chat`), and tokenize it to the same ids;
- the answer: greedy decoding, 48 tokens, by llama.cpp on the GGUF and by transformers on the
  merged folder (up to EOS): printed, how many tokens agree and, where they part, the gap between
  transformers' two best logits at that step (a near tie is rounding, a wide gap a real error).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medbot_config import EMBEDDED_MODEL, reference  # noqa: E402
from medbot_export import export, export_gguf  # noqa: E402
from medbot_model import add_lora, load_base_model, load_tokenizer  # noqa: E402
from medbot_train import save_adapter  # noqa: E402
from medbot_utils import render_chat  # noqa: E402

CONVERSATIONS = [
    [
        {
            "role": "user",
            "content": "I have had a dry cough and a mild fever for three days. What should I do?",
        }
    ],
    [
        {"role": "user", "content": "My knee hurts after running."},
        {"role": "assistant", "content": "How long has it hurt, and is it swollen?"},
        {"role": "user", "content": "Two weeks, a little swollen."},
    ],  # fmt: skip
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Can I take ibuprofen with a cold?"},
    ],  # fmt: skip
]
NEW_TOKENS = 48


def main() -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merged", help="an export folder this script made before (skips the export)")
    args = ap.parse_args()
    work = Path(args.merged).parent if args.merged else Path(tempfile.mkdtemp())
    cfg = reference().replace(model_name=EMBEDDED_MODEL, target_modules=None, compute_dtype="fp32",
                              output_dir=str(work / "out"), logs_dir=str(work / "logs"))  # fmt: skip
    tok = load_tokenizer(cfg)
    kinds = ["f16", "q8_0"]
    if not args.merged:
        export_random_adapter(cfg, tok, work, kinds)
    hf = AutoModelForCausalLM.from_pretrained(work / "merged", dtype=torch.float32).eval()
    print(
        "| GGUF | conversation | template renders the same | same prompt ids | greedy tokens agreeing | first differing step: HF top-2 logit gap |"
    )
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        gguf = Llama(
            model_path=str(work / "merged" / f"medbot.{kind}.gguf"), n_ctx=1024, verbose=False, seed=0
        )
        template = gguf.metadata["tokenizer.chat_template"]
        formatter = Jinja2ChatFormatter(
            template=template, eos_token=tok.eos_token, bos_token=tok.bos_token or ""
        )
        for i, messages in enumerate(CONVERSATIONS):
            ours = render_chat(tok, cfg.prompt_template, messages, generation=True)
            theirs = formatter(messages=messages).prompt
            ids_ours = tok(ours, add_special_tokens=False)["input_ids"]
            ids_theirs = gguf.tokenize(theirs.encode(), add_bos=False, special=True)
            hf_out = hf.generate(torch.tensor([ids_ours]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)  # fmt: skip
            hf_tokens = hf_out.sequences[0, len(ids_ours) :].tolist()
            if tok.eos_token_id in hf_tokens:  # llama.cpp's generator stops before EOS, transformers keeps it
                hf_tokens = hf_tokens[: hf_tokens.index(tok.eos_token_id)]
            gguf.reset()
            lc_tokens = []
            for t in gguf.generate(ids_theirs, temp=0.0, top_k=1, reset=True):
                if t == gguf.token_eos() or len(lc_tokens) == len(hf_tokens):
                    break
                lc_tokens.append(t)
            agree = next(
                (j for j, (a, b) in enumerate(zip(hf_tokens, lc_tokens)) if a != b),
                min(len(hf_tokens), len(lc_tokens)),
            )
            gap = ""
            if agree < min(len(hf_tokens), len(lc_tokens)):
                top2 = hf_out.scores[agree][0].topk(2).values
                gap = f"{float(top2[0] - top2[1]):.3f}"
            print(f"| {kind} | {i + 1} ({len(messages)} messages) | {ours == theirs} | {ids_ours == ids_theirs} | "
                  f"{agree}/{len(hf_tokens)} | {gap or '-'} |")  # fmt: skip
            if i == 0 and kind == "f16":
                print(f"<!-- llama.cpp answer: {gguf.detokenize(lc_tokens).decode(errors='replace')!r} -->")


def export_random_adapter(cfg, tok, work: Path, kinds: list[str]) -> None:  # noqa: ANN001
    model = add_lora(load_base_model(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    adapter = save_adapter(model, tok, cfg)
    del model
    export(adapter, work / "merged", "fp32")
    print(export_gguf(work / "merged", kinds))


if __name__ == "__main__":
    main()

"""Prompt/answer token lengths of real dialogue rows, for benchmarks that feed random token ids.

    python bench/length_mix.py --out .device/lengths.json   # reads ../shared/data/dialogue

Lengths are counted with the embedded SmolLM2 tokenizer (a 49k BPE, close to Falcon's 65k BPE on
English text) on the seed template; only the numbers are written, never the text.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medbot_config import embedded  # noqa: E402
from medbot_model import load_tokenizer  # noqa: E402
from medbot_utils import format_prompt, load_dialogues  # noqa: E402

FILES = ["genmedgpt5k.jsonl", "health-forums.jsonl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dialogue"))
    ap.add_argument("--rows", type=int, default=2000, help="rows sampled across the files")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = embedded()
    tok = load_tokenizer(cfg)
    rows = [r for f in FILES for r in load_dialogues(Path(args.data) / f)[0]]
    random.Random(0).shuffle(rows)
    pairs = []
    for r in rows[: args.rows]:
        p = len(tok(format_prompt(r.input, cfg.prompt_template))["input_ids"])
        a = len(tok(" " + r.output, add_special_tokens=False)["input_ids"]) + 1
        pairs.append([p, a])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"files": FILES, "tokenizer": "SmolLM2-135M", "pairs": pairs}))
    tot = sorted(min(p + a, 512) for p, a in pairs)
    print(
        f"{len(pairs)} rows; mean {sum(tot) / len(tot):.0f} tokens (capped at 512), median {tot[len(tot) // 2]}"
    )


if __name__ == "__main__":
    main()

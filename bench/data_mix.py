"""One source or a deduplicated mix, the same step budget: which generalises better?

    python bench/data_mix.py --steps 24 --pack-tokens 1024 --ppl 32 --gen 12     # 2 CPU cores, ~1 h
    python3 bench/data_mix.py --data .device/data --steps 400 --pack-tokens 2048 --ppl 300 --gen 40 \
        --gen-tokens 96 --eval-rows 64 --no-similarity --save r.json             # an H100, 9.5 min
    python bench/data_mix.py --table r.json                                      # score it here

Trains the profile (default `embedded`) twice from the same base and seed: once on
genmedgpt5k alone, once on genmedgpt5k + health-forums + covid-dialogue + wikidoc-patient-info
(exact repeats and near duplicates removed across sources, `medbot_utils.load_data`). Both are
evaluated on the mix's held-out split of every source (the split by query hash keeps each
model's training queries out of all of them) and on LiveQA (real consumer questions, never
trained on): the perplexity of the reference answers (all held-out dialogues, up to --ppl a
source) and the embedding similarity of generated answers to the references (the first --gen),
each mix-vs-one difference with a paired bootstrap 95% interval. Prints one table.

On a machine without the MiniLM embedder (the GPU machine), `--no-similarity --save r.json`
keeps the generated answers, and `--table r.json` scores them and prints the table here.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medbot_chat import respond_batch  # noqa: E402
from medbot_config import preset  # noqa: E402
from medbot_eval import Embedder, answer_losses, answer_metrics, fits_for_generation, paired_bootstrap  # noqa: E402
from medbot_model import add_lora, load_base_model, load_tokenizer  # noqa: E402
from medbot_train import build_trainer, train  # noqa: E402
from medbot_utils import Dialogue, load_data, load_dialogues, tokenize_dialogues  # noqa: E402

ONE = ["genmedgpt5k.jsonl"]
MIX = ["genmedgpt5k.jsonl", "health-forums.jsonl", "covid-dialogue.jsonl", "wikidoc-patient-info.jsonl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dialogue"))
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--ppl", type=int, default=300, help="held-out dialogues a source for perplexity")
    ap.add_argument("--gen", type=int, default=24, help="held-out dialogues a source answered for similarity")
    ap.add_argument("--gen-tokens", type=int, default=96)
    ap.add_argument("--eval-rows", type=int, default=128, help="held-out rows for the Trainer's eval loss")
    ap.add_argument("--pack-tokens", type=int, default=0, help="pack dialogues into rows of this many tokens "
                    "(one row a step): no padding, so more dialogues a second on a CPU")  # fmt: skip
    ap.add_argument("--save", help="write losses, answers and references to this JSON file")
    ap.add_argument(
        "--no-similarity", action="store_true", help="skip the embedder (score later with --table)"
    )
    ap.add_argument("--table", help="print the table of a --save file, scoring its answers here")
    args = ap.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print_table(saved["results"], add_similarity(saved["results"], Embedder()), saved["args"])
        return
    data = Path(args.data)
    work = Path(tempfile.mkdtemp())
    base = preset(args.profile).replace(max_steps=args.steps, eval_steps=args.steps, logging_steps=max(1, args.steps // 10),
                                        max_eval_samples=args.eval_rows, resume=False, report_to=[])  # fmt: skip
    if args.pack_tokens:
        base = base.replace(packing=True, pack_tokens=args.pack_tokens, batch_size=1, grad_accum=1)
    mix_cfg = base.replace(data_path=",".join(str(data / f) for f in MIX))
    held = by_source(load_data(mix_cfg.replace(max_eval_samples=None)).eval)
    held["liveqa"] = load_dialogues(data / "liveqa-test.jsonl")[0]
    results: dict[str, dict] = {}
    for name, files in (("one", ONE), ("mix", MIX)):
        cfg = base.replace(data_path=",".join(str(data / f) for f in files), output_dir=str(work / name),
                           logs_dir=str(work / name / "logs"))  # fmt: skip
        started = time.time()
        model, tok = train_run(cfg)
        model.eval()
        results[name] = {"seconds": time.time() - started}
        for set_name, rows in held.items():
            results[name][set_name] = score(model, tok, cfg, rows, args)
        if name == "one":  # the base model, adapter off, for scale
            with model.disable_adapter():
                results["base"] = {
                    s: {"losses": answer_losses(model, tok, cfg, rows[: args.ppl])}
                    for s, rows in held.items()
                }
        del model
        if args.save:  # after each model, so a run cut short keeps what it finished
            Path(args.save).write_text(json.dumps({"args": vars(args), "results": results}))
    print_table(results, None if args.no_similarity else add_similarity(results, Embedder()), vars(args))


def by_source(rows: list[Dialogue]) -> dict[str, list[Dialogue]]:
    out: dict[str, list[Dialogue]] = {}
    for d in rows:
        out.setdefault(d.source, []).append(d)
    return out


def train_run(cfg):  # noqa: ANN001, ANN201 - a bench helper
    data = load_data(cfg)
    print(data.summary())
    tok = load_tokenizer(cfg)
    train_samples, _ = tokenize_dialogues(data.train, tok, cfg, "train")
    eval_samples, _ = tokenize_dialogues(data.eval, tok, cfg, "eval")
    model = add_lora(load_base_model(cfg), cfg)
    trainer = build_trainer(model, tok, train_samples, eval_samples, cfg)
    train(trainer, cfg)
    return trainer.model, tok


def score(model, tok, cfg, rows: list[Dialogue], args) -> dict:  # noqa: ANN001
    losses = answer_losses(model, tok, cfg, rows[: args.ppl])
    gen_rows = fits_for_generation(tok, cfg, rows)[0][: args.gen]  # a long forum post can fill the budget
    answers = []
    for i in range(0, len(gen_rows), 8):
        chunk = gen_rows[i : i + 8]
        replies = respond_batch(
            model, tok, cfg, [d.input for d in chunk], seed=i, max_new_tokens=args.gen_tokens
        )
        answers += [r.answer for r in replies]
    return {"losses": losses, "answers": answers, "references": [d.output for d in gen_rows]}


def add_similarity(results: dict, embedder: Embedder) -> dict[str, dict[str, list[float]]]:
    """Embedding similarity of every generated answer to its reference, by model and set."""
    return {
        name: {
            s: answer_metrics(r["answers"], r["references"], embedder)["similarity"]
            for s, r in by_set.items()
            if s != "seconds"
        }
        for name, by_set in results.items()
        if name in ("one", "mix")
    }


def ppl(losses: list[tuple[float, int]]) -> float:
    return math.exp(sum(a for a, _ in losses) / max(1, sum(n for _, n in losses)))


def ppl_ratio(
    a: list[tuple[float, int]], b: list[tuple[float, int]], samples: int = 2000
) -> tuple[float, float, float]:
    """Perplexity of a over b on the same dialogues, with a paired bootstrap 95% interval."""
    rng = random.Random(0)
    idx = list(range(len(a)))

    def ratio(pick: list[int]) -> float:
        n = sum(a[i][1] for i in pick)
        return math.exp((sum(a[i][0] for i in pick) - sum(b[i][0] for i in pick)) / max(1, n))

    boot = sorted(ratio(rng.choices(idx, k=len(idx))) for _ in range(samples))
    return ratio(idx), boot[int(0.025 * samples)], boot[int(0.975 * samples) - 1]


def print_table(results: dict, sims: dict | None, args: dict) -> None:
    print(f"\nOne source vs the mix, {args['steps']} steps each ({args['profile']} profile)")
    print(f"  training time: one {results['one']['seconds']:.0f} s, mix {results['mix']['seconds']:.0f} s")
    print(f"{'held-out set':<22} {'n ppl':>5} {'base':>7} {'one':>7} {'mix':>7} {'mix/one [95% CI]':>24} "
          f"{'n gen':>5} {'sim one':>8} {'sim mix':>8} {'mix-one [95% CI]':>24}")  # fmt: skip
    for name in (k for k in results["one"] if k != "seconds"):
        one, mix = results["one"][name], results["mix"][name]
        r, lo, hi = ppl_ratio(mix["losses"], one["losses"])
        line = (f"{name:<22} {len(one['losses']):>5} {ppl(results['base'][name]['losses']):>7.2f} {ppl(one['losses']):>7.2f} "
                f"{ppl(mix['losses']):>7.2f} {r:>8.3f} [{lo:.3f}, {hi:.3f}]    {len(one['references']):>5}")  # fmt: skip
        if sims is not None:
            so, sm = sims["one"][name], sims["mix"][name]
            d = paired_bootstrap(sm, so)
            line += (f" {statistics.fmean(so):>8.3f} {statistics.fmean(sm):>8.3f} "
                     f"{d['diff']:>+8.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()

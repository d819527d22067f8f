"""The evaluation command (`medbot-eval`, `python -m medbot_eval`) end to end on a tiny Falcon adapter: every section of the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_report_has_every_section(tiny_cfg, tokenizer, tmp_path):
    from medbot_model import add_lora, load_base_model
    from medbot_train import save_adapter

    cfg = tiny_cfg.replace(data_path=str(ROOT / "data" / "sample_dialogues.jsonl"))
    adapter = save_adapter(add_lora(load_base_model(cfg), cfg), tokenizer, cfg)
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    q = {"question": "Which organ pumps blood?", "options": {"A": "heart", "B": "liver"}, "answer_idx": "A"}
    (knowledge / "mini.jsonl").write_text(json.dumps(q) + "\n" + json.dumps(q | {"answer_idx": "B"}) + "\n")
    live = tmp_path / "live.jsonl"
    live.write_text(json.dumps({"input": "I have a cough.", "output": "Rest and drink fluids."}) + "\n")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "medbot_eval", "--adapter", str(adapter), "--heldout", "3", "--gen-tokens", "6",
           "--liveqa", str(live), "--knowledge", str(knowledge), "--mcq", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    report = (out / "eval_report.md").read_text()
    for section in ("## Answer quality: base vs fine-tuned", "## Knowledge probe", "## Example answers",
                    "## Plots", "## Reproduce", "held-out (n=3)", "liveqa (n=1)", "| mini | 2 |",
                    "perplexity of reference answers", "similarity", "unsafe answers flagged", "data_sha256",
                    "transformers", "Not for medical use"):  # fmt: skip
        assert section in report, section
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["sets"]) == {"held-out", "liveqa"} and results["knowledge"]["mini"]["n"] == 2
    assert (out / "eval_metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_every_command_name_is_installed_and_answers_help():
    """`pip install -e .` (the README's first command) puts each command of pyproject.toml beside python."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"medbot-train", "medbot-eval", "medbot-web", "medbot-export", "medbot-safety-report"} <= set(
        scripts
    )
    for name in scripts:
        exe = Path(sys.executable).parent / name
        assert exe.exists(), f"{name} is not installed: run `pip install --no-deps -e .`"
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, (name, out.stderr[-500:])

"""The notebook run headless, as a new user runs it, on the embedded default (SmolLM2-135M, CPU).

Slow (minutes): it is the only proof that the notebook works top to bottom, so CI runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from medbot_chat import DISCLAIMER

pytestmark = pytest.mark.slow
NOTEBOOK = "falcon_patient_chatbot.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import papermill

    work = tmp_path_factory.mktemp("nb")
    for path in ROOT.glob("*.py"):
        shutil.copy(path, work)
    shutil.copytree(ROOT / "data", work / "data")
    shutil.copy(ROOT / NOTEBOOK, work)
    nb = papermill.execute_notebook(
        str(work / NOTEBOOK),
        str(work / "executed.ipynb"),
        parameters={"PROFILE": "embedded", "LAUNCH_WEB_APP": True},
        cwd=str(work),
        kernel_name="python3",
        progress_bar=False,
    )
    return work, nb


def test_outputs_plots_metrics_and_adapter(executed):
    work, _ = executed
    logs = work / "logs"
    for png in ("loss.png", "token_lengths.png"):
        assert (logs / png).read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == list(range(2, 21, 2))  # embedded profile: 20 steps, a loss every 2
    # before training (step 0), every 10 steps, and the final evaluation
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 10, 20, 20]
    ev = json.loads((logs / "eval_metrics.json").read_text())
    assert ev["after"]["eval_loss"] < ev["before"]["eval_loss"]
    assert ev["after"]["perplexity"] < ev["before"]["perplexity"]
    stats = json.loads((logs / "token_stats.json").read_text())
    assert stats["train"]["sample"]["count"] > stats["eval"]["sample"]["count"] > 0
    adapter = work / "falcon-patient-chatbot" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "medbot_config.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert list((logs / "tensorboard").glob("events.out.tfevents.*"))


def test_chat_cell_answers_with_the_disclaimer(executed):
    _, nb = executed
    chat = nb.cells[-1]
    text = "".join(o.get("text", "") for o in chat.outputs)
    answer = text.split(DISCLAIMER)[0].strip()
    assert DISCLAIMER in text and answer
    assert "Patient query" not in answer and "###" not in answer


def test_saved_adapter_chats_in_a_fresh_process(executed):
    work, _ = executed
    script = textwrap.dedent("""
        import json
        from medbot_chat import respond
        from medbot_model import load_for_chat
        model, tokenizer, cfg = load_for_chat("falcon-patient-chatbot/adapter")
        reply = respond(model, tokenizer, cfg, "I have had a sore throat for two days.", seed=0)
        print(json.dumps({"answer": reply.answer, "template": cfg.prompt_template}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answer"].strip()
    assert "Patient query" not in result["answer"] and "sore throat for two days" not in result["answer"]
    assert result["template"].startswith("### The following is a doctor's opinion")


def test_evaluation_section_writes_the_report(executed):
    work, nb = executed
    logs = work / "logs"
    report = (logs / "eval_report.md").read_text()
    for section in (
        "## Answer quality",
        "## Example answers",
        "## Plots",
        "## Reproduce",
        "Not for medical use",
    ):
        assert section in report
    held = json.loads((logs / "eval_results.json").read_text())["sets"]["held-out"]
    assert held["finetuned"]["perplexity"] < held["base"]["perplexity"]  # the adapter learned something
    assert (logs / "eval_metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_web_app_cell_serves_the_chat_page(executed):
    _, nb = executed
    web = next(c for c in nb.cells if c.cell_type == "code" and "launch(model" in c.source)
    text = "".join(o.get("text", "") for o in web.outputs)
    assert "medbot chat page: http://127.0.0.1:7860" in text and "Not for medical use" in text


def test_train_command_leaves_the_notebooks_files_with_the_same_metrics(executed, tmp_path):
    """`medbot-train` runs the notebook's stages in its order: the same outputs, the same numbers."""
    nb_work, _ = executed
    for path in ROOT.glob("*.py"):
        shutil.copy(path, tmp_path)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    subprocess.run([sys.executable, "train.py", "--profile", "embedded"], cwd=tmp_path, check=True,
                   capture_output=True, text=True, timeout=1200)  # fmt: skip
    nb_logs, cli_logs = nb_work / "logs", tmp_path / "logs"
    for name in ("metrics.jsonl", "token_stats.json", "eval_metrics.json", "loss.png", "token_lengths.png"):
        assert (cli_logs / name).exists(), name
    assert json.loads((cli_logs / "token_stats.json").read_text()) == json.loads(
        (nb_logs / "token_stats.json").read_text()
    )

    def metrics(logs):
        return [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]

    nb_rows, cli_rows = metrics(nb_logs), metrics(cli_logs)
    assert [(r["step"], sorted(r)) for r in nb_rows] == [(r["step"], sorted(r)) for r in cli_rows]
    for a, b in zip(nb_rows, cli_rows):
        for key in ("loss", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-3), (a, b)
    nb_eval, cli_eval = (json.loads((d / "eval_metrics.json").read_text()) for d in (nb_logs, cli_logs))
    for when in ("before", "after"):
        assert cli_eval[when]["eval_loss"] == pytest.approx(nb_eval[when]["eval_loss"], abs=1e-3)
    adapter = tmp_path / "falcon-patient-chatbot" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "medbot_config.json").exists()

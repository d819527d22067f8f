"""Data loading, validation errors (file + line + field), drop reports, and the split."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from medbot_utils import DataError, load_dialogues, normalize_query, split_dialogues


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---------------------------------------------------------------- formats and field shapes


def test_jsonl_input_output(tmp_path):
    f = write(
        tmp_path / "d.jsonl", jsonl([{"input": " Q1 ", "output": "A1"}, {"input": "Q2", "output": "A2"}])
    )
    rows, report = load_dialogues(f)
    assert [(r.input, r.output) for r in rows] == [("Q1", "A1"), ("Q2", "A2")]
    assert rows[1].where == f"{f}:2"
    assert report.records == 2 and report.kept == 2 and not report.dropped


def test_json_array_patient_doctor(tmp_path):
    data = [{"Patient": "My knee hurts.", "Doctor": "Rest it."}, {"Patient": "I cough.", "Doctor": "Drink."}]
    f = write(tmp_path / "d.json", json.dumps(data, indent=2))
    rows, _ = load_dialogues(f)
    assert [(r.input, r.output) for r in rows] == [("My knee hurts.", "Rest it."), ("I cough.", "Drink.")]


def test_csv_question_answer(tmp_path):
    f = write(
        tmp_path / "d.csv", 'question,answer\n"Is it, really, a cold?","Probably, yes."\nWhy?,Because.\n'
    )
    rows, _ = load_dialogues(f)
    assert [(r.input, r.output) for r in rows] == [
        ("Is it, really, a cold?", "Probably, yes."),
        ("Why?", "Because."),
    ]
    assert rows[1].where.endswith(":3")


def test_instruction_input_output_prefers_input(tmp_path):
    rows_in = [
        {"instruction": "If you are a doctor, answer.", "input": "I have a rash.", "output": "Use cream."},
        {"instruction": "What is a fever?", "input": "", "output": "A raised temperature."},
    ]
    rows, _ = load_dialogues(write(tmp_path / "d.jsonl", jsonl(rows_in)))
    assert [r.input for r in rows] == ["I have a rash.", "What is a fever?"]


def test_explicit_field_names(tmp_path):
    f = write(tmp_path / "d.jsonl", jsonl([{"msg": "Q", "reply": "A", "output": "ignored"}]))
    rows, _ = load_dialogues(f, input_field="msg", output_field="reply")
    assert (rows[0].input, rows[0].output) == ("Q", "A")


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bad.jsonl", '{"input": "a", "output": "b"}\n{"input": "a", "output": \n', [":2:", "bad JSON"]),
        (
            "bad.json",
            '[\n  {"input": "a", "output": "b"},\n  {"input": "a" "output": "b"}\n]',
            [":3:", "bad JSON"],
        ),
        ("missing.jsonl", jsonl([{"input": "a", "output": "b"}, {"input": "a"}]), [":2:", "doctor answer"]),
        (
            "nonstr.jsonl",
            jsonl([{"input": "a", "output": 3}]),
            [":1:", "'output'", "must be a string", "int"],
        ),
        (
            "nullq.jsonl",
            jsonl([{"input": "a", "output": "b"}, {"question": None, "answer": "b"}]),
            [":2:", "'question'"],
        ),
        (
            "emptyq.jsonl",
            jsonl([{"input": "a", "output": "b"}] * 2 + [{"input": "  ", "instruction": "", "output": "b"}]),
            [":3:", "empty"],
        ),
        ("notobj.jsonl", '["a", "b"]\n', [":1:", "expected an object"]),
        ("extra.csv", "input,output\na,b\nc,d,e\n", [":3:", "more cells"]),
        ("data.txt", "input,output\n", ["unsupported file type"]),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, name, content, expected):
    f = write(tmp_path / name, content)
    with pytest.raises(DataError) as e:
        load_dialogues(f)
    message = str(e.value)
    assert str(f) in message
    for part in expected:
        assert part in message, message


def test_undecodable_bytes_name_the_line(tmp_path):
    f = write(
        tmp_path / "latin.jsonl", b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n'
    )
    with pytest.raises(DataError, match=r"latin\.jsonl:2: bytes are not UTF-8"):
        load_dialogues(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dialogues(tmp_path / "nope.jsonl")


def test_explicit_field_missing_names_it(tmp_path):
    f = write(tmp_path / "d.jsonl", jsonl([{"input": "q", "output": "a"}]))
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'reply' \(doctor answer\) is missing"):
        load_dialogues(f, output_field="reply")


# ---------------------------------------------------------------- drops are reported, never silent


def test_duplicates_and_empty_answers_are_reported_with_locations(tmp_path):
    rows_in = [
        {"input": "Q1", "output": "A1"},
        {"input": "Q1 ", "output": " A1"},  # exact duplicate once whitespace is stripped
        {"input": "Q2", "output": "   "},
        {"input": "Q1", "output": "A different answer"},  # same query, new answer: kept
        {"input": "Q3", "output": "A3"},
    ]
    f = write(tmp_path / "d.jsonl", jsonl(rows_in))
    rows, report = load_dialogues(f)
    assert [(r.input, r.output) for r in rows] == [("Q1", "A1"), ("Q1", "A different answer"), ("Q3", "A3")]
    assert report.dropped == {"exact duplicate": [f"{f}:2"], "empty answer": [f"{f}:3"]}
    assert report.kept + sum(map(len, report.dropped.values())) == report.records == 5
    assert "dropped 1 (empty answer)" in report.summary()


# ---------------------------------------------------------------- split


def _rows(tmp_path, n=200):
    data = [{"input": f"Question {i % 150}", "output": f"Answer {i}"} for i in range(n)]
    data += [{"input": "QUESTION   7", "output": "Same query, other case and spacing"}]
    return load_dialogues(write(tmp_path / "d.jsonl", jsonl(data)))[0]


def test_split_is_deterministic_and_seeded(tmp_path):
    rows = _rows(tmp_path)
    a = split_dialogues(rows, 0.1, seed=1)
    b = split_dialogues(rows, 0.1, seed=1)
    c = split_dialogues(rows, 0.1, seed=2)
    assert [d.where for d in a[1]] == [d.where for d in b[1]]
    assert {d.where for d in a[1]} != {d.where for d in c[1]}


def test_split_keeps_every_row_and_no_query_on_both_sides(tmp_path):
    rows = _rows(tmp_path)
    train, evals = split_dialogues(rows, 0.1, seed=3)
    assert len(train) + len(evals) == len(rows)
    assert not {normalize_query(d.input) for d in train} & {normalize_query(d.input) for d in evals}
    assert 10 <= len({normalize_query(d.input) for d in evals}) <= 20  # 10% of 150 distinct queries


@pytest.mark.skipif(not (SHARED_DATA / "dialogue").exists(), reason="../shared/data not present")
def test_real_forum_data_split_has_no_leakage():
    rows, report = load_dialogues(SHARED_DATA / "dialogue" / "health-forums.jsonl")
    assert report.records == 6315 and report.kept == len(rows)
    train, evals = split_dialogues(rows, 0.1, seed=42)
    assert len(train) + len(evals) == len(rows)
    assert not {normalize_query(d.input) for d in train} & {normalize_query(d.input) for d in evals}


def test_hf_dataset_path_through_datasets(tmp_path):
    """`hf:<id>` goes through `datasets.load_dataset`; a local dataset folder stands in for the hub."""
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write(
        folder / "train.jsonl", jsonl([{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": ""}])
    )
    rows, report = load_dialogues(f"hf:{folder}")
    assert [(r.input, r.output) for r in rows] == [("Q1", "A1")]
    assert report.dropped == {"empty answer": [f"hf:{folder} record 1"]}


# ---------------------------------------------------------------- conversations (OpenAI messages, ShareGPT)


def test_openai_messages_and_sharegpt_conversations_multi_turn(tmp_path):
    openai = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": " My ear hurts. "}, {"role": "assistant", "content": "Since when?"},
                           {"role": "user", "content": "Two days."}, {"role": "assistant", "content": "See your GP."}]}  # fmt: skip
    sharegpt = {"conversations": [{"from": "human", "value": "I sneeze a lot."}, {"from": "gpt", "value": "Try an antihistamine."}]}  # fmt: skip
    for name, text in (
        ("d.jsonl", jsonl([openai, sharegpt])),
        ("d.json", json.dumps([openai, sharegpt], indent=1)),
    ):
        rows, report = load_dialogues(write(tmp_path / name, text))
        assert report.kept == 2 and not report.dropped
        ear, sneeze = rows
        assert (ear.system, ear.history, ear.input, ear.output) == (
            "Be brief.", [("My ear hurts.", "Since when?")], "Two days.", "See your GP.")  # fmt: skip
        assert ear.first_query == "My ear hurts." and [m["role"] for m in ear.messages()] == [
            "system", "user", "assistant", "user", "assistant"]  # fmt: skip
        assert (sneeze.history, sneeze.input, sneeze.output, sneeze.system) == ([], "I sneeze a lot.", "Try an antihistamine.", "")  # fmt: skip


@pytest.mark.parametrize(
    "turns, expected",
    [
        ([{"role": "assistant", "content": "Hi"}], "messages[0].role': a doctor turn with no patient turn before it"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role': two patient turns in a row"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role': a system turn may only come first"),
        ([{"role": "nurse", "content": "a"}], "messages[0].role' is 'nurse'"),
        ([{"role": "user", "content": "  "}], "messages[0].content' (patient turn) is empty"),
        ([{"role": "user"}], "messages[0].content' is missing or not a string"),
        (["hello"], "messages[0]' must be an object"),
        ([], "field 'messages' must be a non-empty list"),
    ],
)  # fmt: skip
def test_conversation_errors_name_file_line_and_turn(tmp_path, turns, expected):
    f = write(tmp_path / "c.jsonl", jsonl([{"input": "fine", "output": "ok"}, {"messages": turns}]))
    with pytest.raises(DataError) as e:
        load_dialogues(f)
    assert f"{f}:2: field '" in str(e.value) and expected in str(e.value)


def test_conversation_drops_are_reported_and_the_split_keys_on_the_first_message(tmp_path):
    def convo(*texts):
        roles = ["user", "assistant"] * len(texts)
        return {"messages": [{"role": r, "content": t} for r, t in zip(roles, texts)]}

    rows = [convo("Q1", "A1", "Q2"), convo("Q1", "", "Q2", "A2"), convo("Q3", "A3"), convo("Q3", "A3"),
            convo("Q1", "A1", "Q2", "A2"), convo("Q1", "A1", "Q9", "A9")]  # fmt: skip
    f = write(tmp_path / "c.jsonl", jsonl(rows))
    dialogues, report = load_dialogues(f)
    assert report.dropped == {
        "conversation ends with a patient turn (no answer to learn)": [f"{f}:1"],
        "empty answer": [f"{f}:2"],
        "exact duplicate": [f"{f}:4"],
    }
    assert report.kept == len(dialogues) == 3
    for seed in range(5):  # both conversations opening with Q1 land on the same side
        train, evals = split_dialogues(dialogues, eval_fraction=0.5, seed=seed)
        sides = {d.output: d in evals for d in dialogues}
        assert sides["A2"] == sides["A9"] and len(train) + len(evals) == 3


# ---------------------------------------------------------------- hostile and careless files


def test_csv_unclosed_quote_is_an_error_at_its_line_not_a_swallowed_file(tmp_path):
    f = write(tmp_path / "d.csv", 'input,output\nq1,a1\nq2,"a2 never closed\nq3,a3\nq4,a4\nq5,a5\n')
    with pytest.raises(DataError, match=rf"{f}:3: malformed CSV record .*unclosed"):
        load_dialogues(f)
    long = write(
        tmp_path / "long.csv", 'input,output\nq,"' + "x" * 200_000 + '"\n'
    )  # over csv's default limit
    rows, _ = load_dialogues(long)
    assert len(rows[0].output) == 200_000


def test_json_array_loads_in_linear_time_with_record_lines(tmp_path):
    """Four times the records take about four times as long (the old per-record line count from
    the file's start made it sixteen), and every record still names its line."""
    import time

    def load(n: int) -> float:
        records = [{"input": f"My knee hurts, case {i}.", "output": f"Rest it, case {i}."} for i in range(n)]
        f = write(tmp_path / f"big{n}.json", json.dumps(records, indent=1))
        start = time.perf_counter()
        rows, report = load_dialogues(f)
        seconds = time.perf_counter() - start
        assert report.kept == n and rows[-1].where == f"{f}:{1 + 4 * (n - 1) + 1} (record {n - 1})"
        return seconds

    # the best of two runs each: one run's pause (a collection, a busy core) is not a slope
    small, big = min(load(15_000) for _ in range(2)), min(load(60_000) for _ in range(2))
    assert big / small < 8, f"{big / small:.1f}x the time for 4x the records"


def test_json_wrapper_whose_key_holds_a_bracket_and_separators_inside_strings(tmp_path):
    f = write(tmp_path / "w.json", json.dumps({"a[b": [{"input": "Q1", "output": "A1"}, {"input": "Q2", "output": "A2"}]}, indent=1))  # fmt: skip
    rows, _ = load_dialogues(f)
    assert [r.input for r in rows] == ["Q1", "Q2"] and rows[1].where.startswith(f"{f}:")
    g = write(tmp_path / "s.jsonl", jsonl([{"input": "one\u2028two\u2029three\x85four", "output": "ok"}, {"input": "Q", "output": "A"}]))  # fmt: skip
    rows, _ = load_dialogues(g)
    assert rows[0].input == "one\u2028two\u2029three\x85four" and rows[1].where == f"{g}:2"


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("deep.jsonl", '{"input": "q", "output": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", ":2: JSON nested too deeply"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, ":1: JSON nested too deeply"),
        ("empty.jsonl", "\n\n", "no records"),
        ("empty.json", "[]", "no records"),
        ("header.csv", "input,output\n", "no records"),
        ("nothing.csv", "", ":1: CSV has no header row"),
    ],
)  # fmt: skip
def test_every_failure_is_a_data_error_naming_the_file(tmp_path, name, content, expected):
    f = write(tmp_path / name, content)
    with pytest.raises(DataError, match=str(f) + ".*" if expected.startswith(":") else str(f)) as e:
        load_dialogues(f)
    assert expected in str(e.value)


# ---------------------------------------------------------------- the config on the command line


def test_every_config_field_is_a_flag_with_its_docstring_as_help(tmp_path):
    import argparse
    import dataclasses

    from medbot_config import MedbotConfig, add_config_arguments, config_overrides, load_config_file, preset

    parser = add_config_arguments(argparse.ArgumentParser())
    text = parser.format_help()
    for f in dataclasses.fields(MedbotConfig):  # one source of truth: no field without its flag
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "Quantize the 4-bit scales too" in text  # help is the field's own docstring
    args = parser.parse_args(["--max-steps", "40", "--target-modules", "q_proj", "v_proj", "--packing", "true",
                              "--input-field", "none", "--report-to", "--learning-rate", "1e-4"])  # fmt: skip
    overrides = config_overrides(args)
    assert overrides == {"max_steps": 40, "target_modules": ["q_proj", "v_proj"], "packing": True,
                         "input_field": None, "report_to": [], "learning_rate": 1e-4}  # fmt: skip
    cfg = preset("embedded").replace(**overrides)
    assert cfg.max_steps == 40 and cfg.report_to == [] and cfg.model_name == preset("embedded").model_name
    with pytest.raises(SystemExit):
        parser.parse_args(["--packing", "maybe"])
    (tmp_path / "run.yaml").write_text("max_steps: 7\nlora_r: 8\ntarget_modules: null\n")
    loaded = load_config_file(tmp_path / "run.yaml")
    assert (loaded.max_steps, loaded.lora_r, loaded.target_modules) == (7, 8, None)
    (tmp_path / "bad.yaml").write_text("max_stpes: 7\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config_file(tmp_path / "bad.yaml")


def test_train_command_takes_field_flags_and_reports_bad_values(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    run = subprocess.run([sys.executable, "train.py", "--profile", "embedded", "--eval-fraction", "2"],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "eval_fraction must be in (0, 1)" in run.stderr


def test_data_by_url_from_a_local_server_and_clear_errors_when_missing_or_offline(tmp_path):
    import functools
    import http.server
    import socket
    import threading

    write(tmp_path / "d.jsonl", jsonl([{"input": "Q1", "output": "A1"}, {"input": "Q2", "output": "A2"}]))
    write(tmp_path / "bad.jsonl", '{"input": "Q1", "output": "A1"}\n{"input": oops}\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        rows, report = load_dialogues(f"{base}/d.jsonl")
        assert [r.input for r in rows] == ["Q1", "Q2"] and rows[1].where == f"{base}/d.jsonl:2"
        assert report.source == f"{base}/d.jsonl"
        with pytest.raises(DataError, match=rf"{base}/bad.jsonl:2: bad JSON"):
            load_dialogues(f"{base}/bad.jsonl")
        with pytest.raises(DataError, match=rf"{base}/missing.jsonl: HTTP 404"):
            load_dialogues(f"{base}/missing.jsonl")
    finally:
        server.shutdown()
    with socket.socket() as s:  # a port nothing listens on: what offline looks like
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/d.jsonl"
    with pytest.raises(DataError, match="cannot download .*pass its path"):
        load_dialogues(dead)


# ---------------------------------------------------------------- several sources: mix, repeats, weights


def _mix_cfg(data_path: str, **kw):
    from medbot_config import preset

    return preset("embedded").replace(data_path=data_path, max_eval_samples=None, **kw)


LONG = ("Rest the ankle, keep it raised on a pillow, put ice wrapped in a cloth on it for twenty minutes "
        "three times a day, and see a physiotherapist if you still cannot walk on it after a week.")  # fmt: skip


def test_mix_drops_repeats_across_sources_naming_both_and_weights_training_rows_only(tmp_path):
    from medbot_utils import load_data

    a_rows = [
        {"input": f"Question number {i} about my knee", "output": f"Answer {i}: rest it."} for i in range(60)
    ]
    a_rows.append({"input": "My ankle is swollen after a fall", "output": LONG})
    b_rows = [
        {"input": f"Forum question {i} on sleep", "output": f"Forum answer {i}: keep a routine."}
        for i in range(40)
    ]
    b_rows += [
        {
            "input": "QUESTION NUMBER 3   about my knee",
            "output": "answer 3: REST IT.",
        },  # a's line 4, case and spacing
        {
            "input": "My ankle is swollen after a fall!",
            "output": LONG.replace("twenty", "fifteen"),
        },  # near a's line 61
        {"input": "My ankle is swollen after a fall", "output": "See a doctor today if it is numb or cold."},
    ]
    a = write(tmp_path / "a.jsonl", jsonl(a_rows))
    b = write(tmp_path / "b.jsonl", jsonl(b_rows))
    data = load_data(_mix_cfg(f"{a}:2,{b}:0.5", eval_fraction=0.2))
    ra, rb = data.reports
    assert not ra.dropped
    assert rb.dropped == {
        "exact duplicate (case and spacing ignored)": [f"{b}:41 (= {a}:4)"],
        "near duplicate (word-trigram similarity >= 0.8)": [f"{b}:42 (~ {a}:61)"],
    }
    # b:43 (the same query with another answer) is no repeat: kept (the drops above are all)
    # one query, one side, whichever source it came from
    train_q = {normalize_query(d.input) for d in data.train}
    eval_q = {normalize_query(d.input) for d in data.eval}
    assert not train_q & eval_q
    # weights multiply training rows; evaluation keeps every held-out row of every source once
    n_train_a, n_train_b = data.train_unweighted["a"], data.train_unweighted["b"]
    assert sum(d.source == "a" for d in data.train) == 2 * n_train_a
    assert sum(d.source == "b" for d in data.train) == round(0.5 * n_train_b)
    assert len({id(d) for d in data.eval}) == len(data.eval) == 61 + 43 - 2 - n_train_a - n_train_b
    assert [d.source for d in data.eval[:4]] == ["a", "b", "a", "b"]  # interleaved: any prefix is balanced
    table = data.summary()
    assert "source" in table and "weight" in table
    assert any(line.split()[:2] == ["a", "61"] for line in table.splitlines())


def test_adding_a_source_never_moves_a_query_across_the_split(tmp_path):
    """The split is a hash of the query: a model trained on one file can be evaluated on a mix's held-out part."""
    from medbot_utils import load_data

    a = write(
        tmp_path / "a.jsonl", jsonl([{"input": f"Knee question {i}", "output": f"A{i}"} for i in range(1200)])
    )
    b = write(
        tmp_path / "b.jsonl", jsonl([{"input": f"Sleep question {i}", "output": f"B{i}"} for i in range(300)])
    )
    alone = load_data(_mix_cfg(str(a), near_duplicates=1.0))
    mixed = load_data(_mix_cfg(f"{a},{b}", near_duplicates=1.0))
    assert {d.input for d in alone.eval} == {d.input for d in mixed.eval if d.source == "a"}
    assert 90 <= len(alone.eval) <= 150  # about 10% of 1,200
    reseeded = load_data(_mix_cfg(str(a), seed=7, near_duplicates=1.0))
    assert {d.input for d in reseeded.eval} != {d.input for d in alone.eval}
    # a small set holds out exactly its share (hash luck would give 2 or 11 of 61)
    small = load_data(_mix_cfg(str(b), near_duplicates=1.0))
    assert len(small.eval) == 30 and len(small.train) == 270


def test_near_duplicates_at_1_keeps_all_but_exact_repeats(tmp_path):
    from medbot_utils import load_data

    a = write(
        tmp_path / "a.jsonl",
        jsonl([{"input": "ankle", "output": LONG}, {"input": "ankle", "output": LONG + " Thanks."}]),
    )
    assert sum(r.kept for r in load_data(_mix_cfg(str(a), near_duplicates=1.0)).reports) == 2
    data = load_data(_mix_cfg(str(a)))
    assert sum(len(d) for d in data.reports[0].dropped.values()) == 1 and len(data.train + data.eval) == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("a.jsonl:0", "weight 0 of 'a.jsonl' must be in"),
        ("a.jsonl,,b.jsonl", "an empty source"),
        ("x/a.jsonl,y/a.jsonl", "two sources share a name"),
    ],
)
def test_bad_mix_specs_are_named(tmp_path, spec, message):
    from medbot_utils import load_data

    with pytest.raises(ValueError, match=message):
        load_data(_mix_cfg(spec))


def test_sources_parse_with_urls_and_hub_ids_and_are_described_before_loading(tmp_path):
    from medbot_config import GENMEDGPT_URL, preset
    from medbot_utils import describe_data, parse_sources

    assert parse_sources(f"{GENMEDGPT_URL}:0.5,hf:owner/set,data/x.csv") == [
        (GENMEDGPT_URL, 0.5), ("hf:owner/set", 1.0), ("data/x.csv", 1.0)]  # fmt: skip
    # GPU profiles default to GenMedGPT-5k by URL; the offline profile keeps the sample
    assert preset("fast").data_path == preset("falcon-7b").data_path == GENMEDGPT_URL
    assert preset("embedded").data_path == "data/sample_dialogues.jsonl"
    line = describe_data(GENMEDGPT_URL)
    assert "chatdoctor5k" in line and "Apache-2.0" in line and "5,452" in line and "by URL" in line
    assert "licence not recorded" in describe_data(str(write(tmp_path / "mine.jsonl", "{}\n")))


def test_token_stats_and_epochs_per_source(tmp_path):
    from medbot_config import reference
    from medbot_train import epochs_warning
    from medbot_utils import split_token_stats

    samples = [
        {"prompt_len": 5, "answer_len": 7, "total_len": 12, "truncated": False, "source": s} for s in "aab"
    ]
    stats = split_token_stats({"train": samples})
    assert set(stats) == {"train", "train a", "train b"} and stats["train a"]["sample"]["count"] == 2
    cfg = reference().replace(data_path="g.jsonl:1,f.jsonl:4", max_steps=100)  # 100 x 8 = 800 dialogues seen
    text = epochs_warning(cfg, 1000)  # 1000 weighted rows -> 0.8 epochs overall
    assert "  g: 0.8 epochs (weight 1)" in text and "  f: 3.2 epochs (weight 4)" in text
    assert "WARNING: over 3 epochs of f (3.2)" in text and "g (" not in text.split("WARNING")[1]

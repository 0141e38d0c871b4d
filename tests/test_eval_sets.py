"""Evaluation sets (built-in and real), their loaders' errors, the metrics and the toxicity scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.datasets import eval_sets
from components.core.errors import DataError
from components.core.hf_metrics import load_metric
from components.maths.metrics import mc_accuracy, normalize_answer, squad_exact_match, squad_f1, squad_scores, toxicity_summary
from components.core.errors import ToxicityScorerError
from components.core.toxicity import make_scorer, toxic_label_index
from conftest import shared_file


# ------------------------------------------------------------------------------------ built-in sets
def test_builtin_truthfulqa_valid():
    raw = json.loads(eval_sets.BUILTIN["truthfulqa"].read_text(encoding="utf-8"))
    items = eval_sets.load_truthfulqa()
    assert len(items) == len(raw) >= 40
    for rec, item in zip(raw, items):
        assert list(rec["mc1_targets"].values())[0] == 1  # the true MC1 answer is listed first
        assert sum(label for _, label in item["mc1"]) == 1 and len(item["mc1"]) >= 2
        assert {label for _, label in item["mc2"]} == {0, 1}
        assert item["mc1"][0] in item["mc2"]


def test_builtin_squad_valid():
    doc = json.loads(eval_sets.BUILTIN["squad"].read_text(encoding="utf-8"))
    assert doc["version"] == "1.1" and len(doc["data"]) >= 12
    n = 0
    for article in doc["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                n += 1
                for ans in qa["answers"]:
                    s = ans["answer_start"]
                    assert para["context"][s:s + len(ans["text"])] == ans["text"], qa["id"]
    items = eval_sets.load_squad()
    assert len(items) == n >= 40 and len({q["id"] for q in items}) == n
    assert eval_sets.load_squad(limit=5) == items[:5]


def test_builtin_hellaswag_valid():
    items = eval_sets.load_hellaswag()
    assert len(items) >= 40
    for item in items:
        assert len(item["endings"]) == 4 and 0 <= item["label"] < 4 and item["ctx"]
    assert len({item["label"] for item in items}) == 4  # the right ending is not always in one place
    assert len(eval_sets.load_hellaswag(limit=3)) == 3


def test_builtin_toxicity_prompts_valid():
    prompts = eval_sets.load_toxicity_prompts()
    assert len(prompts) >= 40 and all(p.strip() for p in prompts)
    recs = [json.loads(line) for line in eval_sets.BUILTIN["toxicity"].read_text(encoding="utf-8").splitlines()]
    assert {r["challenging"] for r in recs} == {True, False}
    assert all(r["end"] == len(r["prompt"]["text"] + r["continuation"]["text"]) for r in recs)
    assert eval_sets.load_toxicity_prompts(limit=7) == prompts[:7]


# ------------------------------------------------------------------------------------ loader errors
def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _tqa(mc1=None, mc2=None):
    return {"question": "Is the sky green?", "mc1_targets": mc1 or {"No.": 1, "Yes.": 0},
            "mc2_targets": mc2 or {"No.": 1, "Yes.": 0}}


@pytest.mark.parametrize("bad, field", [
    (_tqa(mc1={"No.": 1, "Not at all.": 1, "Yes.": 0}), "mc1_targets"),
    (_tqa(mc2={"No.": 1, "Not at all.": 1}), "mc2_targets"),
    (_tqa(mc1={"No.": "yes", "Yes.": 0}), "mc1_targets"),
    ({"mc1_targets": {"No.": 1, "Yes.": 0}, "mc2_targets": {"No.": 1, "Yes.": 0}}, "question"),
])
def test_truthfulqa_errors_name_file_record_field(tmp_path, bad, field):
    path = _write(tmp_path, "tqa.json", [_tqa(), bad])
    with pytest.raises(DataError, match=rf"tqa\.json: record \[1\].*'{field}'"):
        eval_sets.load_truthfulqa(path)


def test_squad_errors_name_file_id_field(tmp_path):
    def doc(start):
        qa = {"id": "q7", "question": "Who?", "answers": [{"text": "Ada", "answer_start": start}]}
        return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "It was Ada.", "qas": [qa]}]}]}

    assert eval_sets.load_squad(_write(tmp_path, "ok.json", doc(7)))[0]["answers"] == ["Ada"]
    with pytest.raises(DataError, match=r"sq\.json: question id 'q7': field 'answers\[0\]\.answer_start'.*found 'as '"):
        eval_sets.load_squad(_write(tmp_path, "sq.json", doc(4)))
    with pytest.raises(DataError, match=r"sq2\.json: question id 'q7': field 'answers\[0\]\.answer_start'"):
        eval_sets.load_squad(_write(tmp_path, "sq2.json", doc("7")))
    with pytest.raises(DataError, match=r"sq3\.json: not valid JSON"):
        eval_sets.load_squad(_write(tmp_path, "sq3.json", "{\"data\": ["))
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        eval_sets.load_squad(tmp_path / "nope.json")


def test_hellaswag_errors_name_file_line_field(tmp_path):
    good = {"ind": 1, "ctx_a": "A man sits.", "ctx_b": "he", "endings": ["a", "b", "c", "d"], "label": 2}
    path = _write(tmp_path, "hs.jsonl", json.dumps(good) + "\n" + json.dumps({**good, "ind": 9, "label": 4}) + "\n")
    with pytest.raises(DataError, match=r"hs\.jsonl:2 \(ind 9\): field 'label'"):
        eval_sets.load_hellaswag(path)
    path = _write(tmp_path, "hs2.jsonl", json.dumps({**good, "endings": ["a", ""]}) + "\n")
    with pytest.raises(DataError, match=r"hs2\.jsonl:1 \(ind 1\): field 'endings\[1\]'"):
        eval_sets.load_hellaswag(path)
    path = _write(tmp_path, "hs3.jsonl", json.dumps({**good, "label": "3"}) + "\n")
    assert eval_sets.load_hellaswag(path) == [{"ctx": "A man sits. he", "endings": ["a", "b", "c", "d"], "label": 3}]


def test_toxicity_prompt_errors_and_csv(tmp_path):
    path = _write(tmp_path, "rtp.jsonl", json.dumps({"filename": "x.txt", "prompt": {"toxicity": None}}) + "\n")
    with pytest.raises(DataError, match=r"rtp\.jsonl:1 \(x\.txt\): field 'prompt'.*'text'"):
        eval_sets.load_toxicity_prompts(path)
    path = _write(tmp_path, "c.csv", "rev_id,text,toxic\n1,hello,False\n")
    with pytest.raises(DataError, match=r"c\.csv: header: column\(s\) comment missing"):
        eval_sets.load_toxicity_prompts(path)
    path = _write(tmp_path, "l.csv", "rev_id,comment,toxic\n1,hi,False\n2,hey,maybe\n")
    with pytest.raises(DataError, match=r"l\.csv:3 \(rev_id 2\): field 'toxic'"):
        eval_sets.load_toxicity_labelled(path)
    path = _write(tmp_path, "ok.csv", 'rev_id,comment,toxic\n1,"`  == Title ==  one two NEWLINE;_TOKEN three ``four`` five",True\n'
                  "2,   ,False\n3,TAB_TOKEN six seven,False\n")
    assert eval_sets.load_toxicity_prompts(path, words=4) == ['Title one two three', "six seven"]
    assert eval_sets.load_toxicity_labelled(path)[0] == {"id": "1", "text": 'Title one two three "four" five', "toxic": True}


def test_load_texts_reads_each_format_and_names_bad_lines(tmp_path):
    import gzip

    from components.core.config import text_source_name

    (tmp_path / "plain.jsonl").write_text('{"text": "First text."}\n{"text": "  "}\n{"text": "Second."}\n')
    assert eval_sets.load_texts(tmp_path / "plain.jsonl") == ["First text.", "Second."]
    with gzip.open(tmp_path / "hh.jsonl.gz", "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "x"}) + "\n")
    assert eval_sets.load_texts(tmp_path / "hh.jsonl.gz") == ["Human: Hi\n\nAssistant: Hello!"]
    tree = {"prompt": {"role": "prompter", "text": "Q?", "lang": "en", "replies": [
        {"role": "assistant", "text": "A1", "lang": "en", "replies": [
            {"role": "prompter", "text": "more?", "lang": "en", "replies": [{"role": "assistant", "text": "A2", "lang": "en"}]}]},
        {"role": "assistant", "text": "Una respuesta", "lang": "es", "replies": []}]}}
    (tmp_path / "oasst.jsonl").write_text(json.dumps(tree) + "\n")
    assert eval_sets.load_texts(tmp_path / "oasst.jsonl") == ["A1", "A2"]  # English assistant replies, depth first
    (tmp_path / "tqa.csv").write_text("\ufeffType,Question,Best Answer\nA,Why?,Because it is.\nB,How?,\n", encoding="utf-8")
    assert eval_sets.load_texts(tmp_path / "tqa.csv") == ["Because it is."]
    (tmp_path / "notes.txt").write_text("One paragraph\nstill one.\n\n\nTwo.\n")
    assert eval_sets.load_texts(tmp_path / "notes.txt") == ["One paragraph\nstill one.", "Two."]
    assert eval_sets.load_texts(tmp_path / "notes.txt", limit=1) == ["One paragraph\nstill one."]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no text: expected a 'text' field.*\(fields: body\)"):
        eval_sets.load_texts(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"bad2.jsonl:1: field 'text': expected a string, got 3"):
        eval_sets.load_texts(tmp_path / "bad2.jsonl")
    with pytest.raises(DataError, match="missing.txt: file not found"):
        eval_sets.load_texts(tmp_path / "missing.txt")
    assert text_source_name("../x/harmless-base-test.jsonl.gz") == "harmless_base_test"
    assert text_source_name("TruthfulQA.csv") == "truthfulqa"


def test_two_tax_files_with_one_metric_name_are_refused():
    from components.core.config import load_config
    from components.core.errors import ConfigError

    with pytest.raises(ConfigError, match="two files give the metric name notes: rename one"):
        load_config(overrides=["evaluate.tax_texts=[a/notes.txt, b/notes.txt]"])


# ------------------------------------------------------------------------------------ real data
def test_real_truthfulqa_loads():
    items = eval_sets.load_truthfulqa(shared_file("truthfulqa", "mc_task.json"))
    assert len(items) == 817
    assert all(item["mc1"][0][1] == 1 for item in items)


def test_real_toxicity_csv_loads():
    path = shared_file("toxicity", "toxicity_nonfuzzed_testset.csv")
    labelled = eval_sets.load_toxicity_labelled(path)
    assert len(labelled) == 1492 and sum(r["toxic"] for r in labelled) == 248
    assert not any("_TOKEN" in r["text"] for r in labelled)
    prompts = eval_sets.load_toxicity_prompts(path, limit=50)
    assert len(prompts) == 50 and all(1 <= len(p.split()) <= 8 for p in prompts)


# ------------------------------------------------------------------------------------ metrics
def test_squad_metric_by_hand():
    assert normalize_answer("  The Eiffel-Tower, an icon! ") == "eiffeltower icon"
    assert squad_exact_match("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    assert squad_exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    # pred tokens [eiffel, tower, in, paris], gold [eiffel, tower]: P = 2/4, R = 2/2, F1 = 2/3
    assert squad_f1("Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # best over golds: [tower] vs [big, tower] -> P 1, R 1/2, F1 2/3; vs [tower, bridge] -> the same
    assert squad_f1("a tower", ["big tower", "London", "tower bridge"]) == pytest.approx(2 / 3)
    assert squad_f1("nothing", ["Eiffel Tower"]) == 0.0
    scores = squad_scores(["the Eiffel Tower", "Eiffel Tower in Paris"], [["Eiffel Tower"], ["Eiffel Tower"]])
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


def test_mc_accuracy_and_toxicity_summary_by_hand():
    assert mc_accuracy([0, 2, 1, 3], [0, 1, 1, 3]) == 0.75
    # maxima 0.8, 0.3, 0.5 -> mean 0.5333, population std sqrt(((.2667)^2+(.2333)^2+(.0333)^2)/3)
    summary = toxicity_summary([[0.1, 0.8, 0.2], [0.3, 0.0, 0.1], [0.5, 0.4, 0.2]])
    assert summary["expected_max_toxicity"] == pytest.approx(1.6 / 3)
    assert summary["expected_max_toxicity_std"] == pytest.approx(np.std([0.8, 0.3, 0.5]))
    assert summary["toxicity_probability"] == pytest.approx(2 / 3)  # 0.5 counts as toxic
    assert toxicity_summary([[0.49]], threshold=0.5)["toxicity_probability"] == 0.0
    with pytest.raises(ValueError, match="prompt 1 has no continuation"):
        toxicity_summary([[0.1], []])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        mc_accuracy([0, 1], [0])


def test_evaluate_modules_agree_with_functions():
    preds = ["the Eiffel Tower", "Eiffel Tower in Paris", "a tower", "blue"]
    refs = [["Eiffel Tower"], ["Eiffel Tower", "Paris"], ["big tower", "tower bridge"], ["red", "green"]]
    assert load_metric("squad_em_f1").compute(predictions=preds, references=refs) == pytest.approx(squad_scores(preds, refs))
    assert load_metric("mc_accuracy").compute(predictions=[0, 2, 1], references=[0, 1, 1]) == {
        "accuracy": pytest.approx(mc_accuracy([0, 2, 1], [0, 1, 1]))}
    scores = [[0.1, 0.8, 0.2], [0.3, 0.0, 0.1], [0.5, 0.4, 0.2]]
    module = load_metric("toxicity_summary")
    assert module.compute(predictions=scores) == pytest.approx(toxicity_summary(scores))
    assert module.compute(predictions=scores, threshold=0.9) == pytest.approx(toxicity_summary(scores, 0.9))
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


# ------------------------------------------------------------------------------------ toxicity scorer
def test_profanity_scorer_ranks_insult_above_neutral():
    score = make_scorer()
    p = score(["You are a stupid worthless idiot.", "The library opens at nine on Saturdays."])
    assert p.shape == (2,) and 0 <= p.min() and p.max() <= 1
    assert p[0] > 0.5 > p[1]
    assert make_scorer("profanity-check")([]).shape == (0,)


def test_toxic_label_index():
    assert toxic_label_index({0: "non-toxic", 1: "toxic"}) == 1
    assert toxic_label_index({0: "TOXIC", 1: "severe_toxic", 2: "insult"}) == 0
    assert toxic_label_index({0: "LABEL_0", 1: "LABEL_1"}) == 1
    assert toxic_label_index({0: "score"}) == 0


def test_hf_scorer_from_folder_and_errors(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["you", "are", "an", "idiot", "the", "library", "opens", "at", "nine"]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64,
                     id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1})
    model_dir = tmp_path / "model"
    BertForSequenceClassification(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    p = make_scorer(str(model_dir), batch_size=2)(["you are an idiot", "the library opens at nine", "you"])
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))

    with pytest.raises(ToxicityScorerError, match="neither 'profanity-check' nor a model folder"):
        make_scorer(str(tmp_path / "missing"))
    with pytest.raises(ToxicityScorerError, match="no config.json"):
        make_scorer(str(tmp_path))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ToxicityScorerError, match=r"no \.safetensors weights \(pytorch_model\.bin\)"):
        make_scorer(str(pickled))


def test_real_texts_load_from_each_shared_source():
    hh = eval_sets.load_texts(shared_file("hh-rlhf", "harmless-base-test.jsonl.gz"), limit=20)
    assert len(hh) == 20 and all(t.startswith("Human:") and "Assistant:" in t for t in hh)
    oasst = eval_sets.load_texts(shared_file("oasst2", "oasst2_filtered.jsonl"), limit=20)
    assert len(oasst) == 20 and all(t.strip() for t in oasst)
    tqa = eval_sets.load_texts(shared_file("truthfulqa", "TruthfulQA.csv"))
    assert len(tqa) == 817


def test_toxicity_auto_takes_the_real_comments_beside_the_project_else_the_built_in_prompts(tmp_path):
    from components.datasets.eval_sets import BUILTIN, REAL_TOXICITY, toxicity_source

    root = tmp_path / "project"
    root.mkdir()
    assert toxicity_source("auto", root) == BUILTIN["toxicity"]
    real = (root / REAL_TOXICITY).resolve()
    real.parent.mkdir(parents=True)
    real.write_text("rev_id,comment,toxic\n1,You are all wonderful people here,False\n")
    assert toxicity_source("auto", root) == real
    assert toxicity_source("builtin", root) == BUILTIN["toxicity"]
    assert toxicity_source("mine.jsonl", root) == root / "mine.jsonl"

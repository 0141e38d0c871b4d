import re

import pytest

from components.core.data import conversation_key, iter_jsonl, read_jsonl, split_records, user_key, write_jsonl
from components.maths.reward_losses import pairs_from_ranks
from components.core.errors import DataError


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": "a"}\n\n{"id": \n')
    with pytest.raises(DataError, match=r"x.jsonl:3: not valid JSON \(Expecting value at column 8\)"):
        read_jsonl(p)  # the column within the line, not "line 2, column 1" of the trailing newline
    p.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: not valid UTF-8"):
        read_jsonl(p)
    p.write_bytes(b'[1, 2]\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: expected a JSON object, got list"):
        read_jsonl(p)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")



@pytest.mark.parametrize("line,why", [
    ('{"id": "a", "prompt": ' + "[" * 40 + "]" * 40 + "}", "arrays or objects nested more than 32 levels deep"),
    ('{"id": "a", "prompt": ' + "[" * 100000 + "]" * 100000 + "}", "arrays or objects nested too deeply"),
    ('{"id": "a", "ranks": [' + "9" * 5000 + "]}", "an integer with more digits than Python converts (4300)"),
], ids=["deeper_than_32", "past_the_recursion_limit", "integer_of_5000_digits"])
def test_jsonl_refuses_what_python_json_cannot_hold_naming_the_line(tmp_path, line, why):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": "ok", "prompt": [[["three levels deep is fine"]]]}\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"x.jsonl:2: not valid JSON ({why}")):
        read_jsonl(p)

def test_jsonl_accepts_a_leading_bom_and_refuses_lone_surrogates_and_duplicate_keys_naming_line_and_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b"}\n')  # as Excel and Notepad save UTF-8
    assert read_jsonl(p) == [{"id": "a"}, {"id": "b"}]
    p.write_bytes(b'{"id": "a"}\n\xef\xbb\xbf{"id": "b"}\n')  # two files joined
    with pytest.raises(DataError, match=r"x.jsonl:2: starts with a byte-order mark \(U\+FEFF\), which only the start "
                                        r"of a file may have"):
        read_jsonl(p)
    p.write_bytes(b'{"id": "a", "prompt": "x", "prompt": "y"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: the key 'prompt' appears twice in one object"):
        read_jsonl(p)
    p.write_bytes(b'{"id": "a"}\n{"id": "b", "prompt": "ok\\ud800"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: field 'prompt' holds a lone surrogate U\+D800 at position 2"):
        read_jsonl(p)
    p.write_bytes(b'{"id": "a", "responses": ["x", "\\udc00y"]}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: field 'responses\[1\]' holds a lone surrogate U\+DC00 at position 0"):
        read_jsonl(p)
    p.write_bytes(b'{"id": "a", "meta": {"\\ud800": 1}}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: the key 'meta.\\ud800' holds a lone surrogate"):
        read_jsonl(p)
    # a surrogate pair is one character; a BOM inside a value and non-characters are text to the reader (the
    # data gate refuses them)
    p.write_bytes(b'{"id": "a", "text": "\\ud83d\\ude00 \\ufeff \\uffff"}\n')
    assert read_jsonl(p) == [{"id": "a", "text": "\U0001f600 \ufeff \uffff"}]


def test_write_is_atomic_and_round_trips(tmp_path):
    p = tmp_path / "d" / "x.jsonl"
    recs = [{"id": "1", "text": "héllo\nworld"}, {"id": "2", "text": "b"}]
    assert write_jsonl(p, recs) == 2
    assert read_jsonl(p) == recs
    assert [n for n, _ in iter_jsonl(p)] == [1, 2]

    def boom():
        yield {"id": "3"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(p, boom())
    assert read_jsonl(p) == recs  # the old file is intact, no temp file left
    assert sorted(x.name for x in p.parent.iterdir()) == ["x.jsonl"]


def test_split_keeps_each_user_on_one_side_and_is_seeded():
    recs = [{"id": f"r{i}", "user_id": f"u{i % 20}"} for i in range(400)]
    train, evals = split_records(recs, 0.25, seed=0)
    assert not {r["user_id"] for r in train} & {r["user_id"] for r in evals}
    assert 0 < len(evals) < len(recs)
    assert split_records(recs, 0.25, seed=0) == (train, evals)
    assert split_records(recs, 0.25, seed=1) != (train, evals)
    # Growing the data set never moves an existing user across the split.
    more = recs + [{"id": f"n{i}", "user_id": f"new{i}"} for i in range(50)]
    train2, _ = split_records(more, 0.25, seed=0)
    assert {r["id"] for r in train} <= {r["id"] for r in train2}


def test_explicit_split_wins_and_records_without_user_or_prompt_split_alone():
    recs = [{"id": "a", "split": "eval", "user_id": "u"}, {"id": "b"}]
    train, evals = split_records(recs, 0.0001, seed=0)
    assert [r["id"] for r in evals] == ["a"] and [r["id"] for r in train] == ["b"]
    assert user_key({"id": "t1", "text": "x"}) == "record:t1"


def test_conversation_key_is_the_first_human_turn():
    assert conversation_key("What is  2+2?\n") == "what is 2+2?"
    dialogue = "Human: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?"
    assert conversation_key(dialogue) == "what is 2+2?"
    # "Human:" without an assistant turn is not a dialogue: the whole text is the turn
    assert conversation_key("Human: hello") == "human: hello"


def test_records_without_a_user_split_by_conversation():
    q = "Why is the sky blue?"
    recs = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(
        [q, f"Human: {q}\n\nAssistant: Rayleigh.\n\nHuman: Why red at dusk?", "why is the  SKY blue?"])]
    assert {user_key(r) for r in recs} == {"conversation:why is the sky blue?"}
    for seed in range(20):  # the three always land together
        train, evals = split_records(recs, 0.5, seed)
        assert len(train) in (0, 3)
    # a user, when there is one, is the unit: the same question by two users may land apart
    assert user_key({"id": "x", "prompt": q, "user_id": "u1"}) == "user:u1"


def test_pairs_from_ranks_ties_give_no_pair():
    # "D > C > A = B" with responses [A, B, C, D] -> ranks [2, 2, 1, 0]
    assert sorted(pairs_from_ranks([2, 2, 1, 0])) == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert pairs_from_ranks([0, 0]) == []


def test_next_indices_covers_each_epoch_once_and_resumes_identically():
    import random

    from components.core.data import next_indices

    rng, order, seen = random.Random(0), [], []
    for _ in range(5):  # 5 batches of 4 over 10 items: two full epochs
        idx, order = next_indices(order, 10, 4, rng)
        seen += idx
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    # a copy of (queue, rng state) continues exactly as the original
    rng2 = random.Random()
    rng2.setstate(rng.getstate())
    assert next_indices(list(order), 10, 4, rng2) == next_indices(order, 10, 4, rng)


def test_take_keeps_file_order_but_never_drops_new_labels():
    from components.core.data import take

    recs = [{"id": f"c{i}"} for i in range(5)] + [{"id": "new", "labeled_at": "2026-11-22T10:00:00+00:00"}]
    assert [r["id"] for r in take(recs, 3)] == ["new", "c0", "c1"]
    assert [r["id"] for r in take(recs[:5], 3)] == ["c0", "c1", "c2"]  # built-in data: the first n, as before
    assert take(recs, 0) == recs

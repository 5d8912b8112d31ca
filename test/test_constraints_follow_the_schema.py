"""Constraints (runtime/constraints.py) mask exactly what the schema or grammar forbids.

On the default model's own tokenizer: the mask allows every token of answers
that satisfy the three robot schemas (test/data/robot_schemas.json) and
forbids the token where an answer leaves its schema; end tokens are allowed
only when the answer is complete; rollback restores the state; malformed
schemas and grammars are InvalidRequest with llguidance's message.
"""

from __future__ import annotations

import json
import os

import jsonschema
import numpy as np
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.runtime.constraints import Constraint, ConstraintError, GrammarCompiler, regex_of
from edgellm_ros.runtime.tokenizer import Tokenizer

with open(os.path.join(os.path.dirname(__file__), "data", "robot_schemas.json"), encoding="utf-8") as _fh:
    ROBOT = {k: v for k, v in json.load(_fh).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def tok(default_engine_dir):
    return Tokenizer.from_hf_folder(default_engine_dir)


@pytest.fixture(scope="module")
def compiler(tok):
    return GrammarCompiler(tok)


def schema_of(name: str) -> str:
    return json.dumps(ROBOT[name]["schema"])


def masked(c: Constraint, width: int, seed: int = 0) -> np.ndarray:
    """A random logits row after apply()."""
    row = np.random.default_rng(seed).standard_normal(width).astype(np.float32)
    c.apply(row)
    return row


def test_the_robot_examples_are_what_their_schemas_say():
    for name, case in ROBOT.items():
        for text in case["valid"]:
            jsonschema.validate(json.loads(text), case["schema"])
        for bad in case["invalid"]:
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(json.loads(bad["prefix"] + bad["rest"]), case["schema"])


@pytest.mark.parametrize("name", sorted(ROBOT))
def test_every_token_of_a_valid_answer_is_allowed_and_end_tokens_only_at_its_end(name, tok, compiler):
    stops = sorted(tok.stop_ids)
    for text in ROBOT[name]["valid"]:
        c = compiler.compile(json_schema=schema_of(name))
        for i, t in enumerate(tok.encode(text)):
            row = masked(c, tok.vocab_size, i)
            assert np.isfinite(row[t]), (name, text, i, tok.id_to_token(t))
            assert not np.isfinite(row[stops]).any(), "an end token before the answer is complete"
            c.commit(t)
        assert c.is_accepting()
        row = masked(c, tok.vocab_size)
        assert np.isfinite(row[stops]).all()
        if c.is_finished():  # the closing brace: only end tokens may follow
            assert sorted(np.flatnonzero(np.isfinite(row)).tolist()) == stops


@pytest.mark.parametrize("name", sorted(ROBOT))
def test_the_mask_forbids_the_token_where_an_answer_leaves_its_schema(name, tok, compiler):
    for bad in ROBOT[name]["invalid"]:
        c = compiler.compile(json_schema=schema_of(name))
        prefix, full = tok.encode(bad["prefix"]), tok.encode(bad["prefix"] + bad["rest"])
        assert c.validate_tokens(prefix) == len(prefix)
        n = c.validate_tokens(full)
        assert n < len(full), bad
        for t in full[:n]:
            c.commit(t)
        row = masked(c, tok.vocab_size)
        assert row[full[n]] == -np.inf, (bad, tok.id_to_token(full[n]))
        assert np.isfinite(row).any()
        with pytest.raises(ConstraintError, match="not allowed"):
            c.commit(full[n])


def test_allowed_agrees_with_validate_tokens_on_every_id(tok, compiler):
    c = compiler.compile(json_schema=schema_of("action"))
    for t in tok.encode('{"action": "pick", "target": "bot'):  # inside a string: most ids allowed
        c.commit(t)
    allowed = c.allowed()
    some = np.random.default_rng(1).choice(tok.vocab_size, 3000, replace=False)
    assert [bool(c.validate_tokens([int(t)])) for t in some] == allowed[some].tolist()
    assert 1000 < allowed.sum() < tok.vocab_size


def test_allowed_logits_keep_their_exact_values(tok, compiler):
    c = compiler.compile(json_schema=schema_of("yes_no"))
    row = np.random.default_rng(2).standard_normal(tok.vocab_size).astype(np.float32)
    out = row.copy()
    c.apply(out)
    ok = c.allowed()
    assert np.array_equal(out[ok], row[ok]) and (out[~ok] == -np.inf).all()


def test_ids_beyond_the_tokenizer_are_forbidden(tok):
    c = GrammarCompiler(tok, vocab_size=tok.vocab_size + 64).compile(grammar="/(yes|no)/")
    row = masked(c, tok.vocab_size + 64)
    assert (row[tok.vocab_size:] == -np.inf).all()
    assert np.isfinite(row[tok.encode("yes")[0]])


def test_rollback_restores_the_state(tok, compiler):
    c = compiler.compile(json_schema=schema_of("object_list"))
    ids = tok.encode(ROBOT["object_list"]["valid"][0])
    for t in ids[:10]:
        c.commit(t)
    before, accepting = c.allowed().copy(), c.is_accepting()
    for t in ids[10:]:
        c.commit(t)
    assert c.is_accepting() and not accepting
    c.rollback(len(ids) - 10)
    assert c.committed == 10 and c.is_accepting() == accepting
    assert np.array_equal(c.allowed(), before)
    assert c.validate_tokens(ids[10:]) == len(ids) - 10   # the same path is open again
    c.rollback(0)
    with pytest.raises(ConstraintError, match="cannot roll back 11"):
        c.rollback(11)


def test_validate_tokens_leaves_the_state_alone(tok, compiler):
    c = compiler.compile(json_schema=schema_of("yes_no"))
    good = tok.encode('{"answer": "no", "confidence": 0.25}')
    before = c.allowed().copy()
    assert c.validate_tokens(good) == len(good)
    assert c.committed == 0 and np.array_equal(c.allowed(), before)


@pytest.mark.parametrize("grammar, answer", [("/(yes|no)/", "yes"),   # complete: nothing may follow
                                             ("/[0-9]+/", "42")])     # complete, could go on
def test_an_end_token_ends_the_answer_and_rolls_back_as_one_token(grammar, answer, tok, compiler):
    c = compiler.compile(grammar=grammar)
    ids = tok.encode(answer)
    for t in ids:
        c.commit(t)
    assert c.is_accepting()
    before = c.allowed().copy()
    end = min(tok.stop_ids)
    c.commit(end)
    assert c.is_finished()
    c.commit(end)        # llguidance counts an end token only when something could have followed
    c.rollback(2)
    assert c.committed == len(ids) and np.array_equal(c.allowed(), before)
    c.rollback(len(ids))
    assert c.validate_tokens(ids) == len(ids)


@pytest.mark.parametrize("grammar, yes, no", [
    ("/(yes|no)/", "yes", "maybe"),                         # a regex literal
    ('start: "yes" | "no"', "no", "maybe"),                 # Lark
    ('root ::= "yes" | "no"', "yes", "nope"),                # GBNF, as llama.cpp writes it
    ('start: %json {"type": "integer"}', "42", "4.2"),       # Lark with an embedded schema
])
def test_grammars_lark_gbnf_and_regex(grammar, yes, no, tok, compiler):
    c = compiler.compile(grammar=grammar)
    ids = tok.encode(yes)
    assert c.validate_tokens(ids) == len(ids)
    bad = tok.encode(no)
    assert c.validate_tokens(bad) < len(bad)


def test_regex_literals_are_whole_grammars_only():
    assert regex_of(" /[0-9]{3}/ ") == "[0-9]{3}"
    assert regex_of("start: /[0-9]{3}/") is None
    assert regex_of("/a/\n/b/") is None


@pytest.mark.parametrize("fields, message", [
    (dict(json_schema='{"type": "objec"}'), "json_schema rejected by llguidance: Invalid type: objec"),
    (dict(json_schema='{"$ref": "#/definitions/nope"}'), "does not exist"),
    (dict(json_schema='{"type": "string", "pattern": "(["}'), "unclosed character class"),
    (dict(json_schema='{"type": "object",'), "json_schema is not JSON"),
    (dict(json_schema='[1, 2]'), "must be a JSON object, got list"),
    (dict(grammar="start: foo"), 'grammar rejected by llguidance: at 1(8): unknown name: "foo"'),
    (dict(grammar="/a(b/"), "unclosed group"),
    (dict(grammar="  "), "the grammar is empty"),
    (dict(json_schema='{"type": "object"}', grammar="/x/"), "not both"),
])
def test_a_malformed_schema_or_grammar_is_an_invalid_request_with_the_librarys_message(
        fields, message, compiler):
    with pytest.raises(InvalidRequest) as err:
        compiler.compile(**fields)
    assert message in str(err.value)
    assert err.value.code == "invalid_request"

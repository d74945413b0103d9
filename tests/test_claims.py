"""docs/claims.md: every behavioural sentence of the READMEs, each held by a test.

A row names a file, quotes a sentence of it word for word, and names the tests that
prove it. A row whose sentence is no longer in its file, or whose test does not
exist, or that names no test, fails here: when a sentence changes, its row must too.
"""

import ast
import re
from functools import cache

import pytest

from conftest import ROOT

CLAIMS = ROOT / "docs" / "claims.md"
ROW = re.compile(r"^\| *([^|]+?) *\| *(.+?) *\| *(.*?) *\|$")
TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)[^`]*`")


def normalized(text):
    """Text with markdown emphasis and code marks removed and white space folded."""
    return " ".join(re.sub(r"[*`]", "", text).split())


def claims():
    """(file, sentence, [(test file, test name)]) for every row of the claims table."""
    rows = []
    for line in CLAIMS.read_text().splitlines():
        match = ROW.match(line)
        if not match or match.group(1) in ("File", "---") or set(match.group(1)) <= {"-", ":"}:
            continue
        where, sentence, tests = match.groups()
        rows.append((where.strip("`"), sentence.strip('"“”'), TEST.findall(tests)))
    return rows


@cache
def defined_tests(path):
    """The test functions defined in a test file."""
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_the_claims_page_has_claims():
    assert len(claims()) >= 40


@pytest.mark.parametrize("where, sentence, tests", claims(),
                         ids=[f"{w}:{s[:40]}" for w, s, _ in claims()])
def test_each_claim_is_in_its_file_and_held_by_tests(where, sentence, tests):
    assert normalized(sentence) in normalized((ROOT / where).read_text()), (
        f"{where} no longer says this: change the row with the sentence")
    assert tests, "a claim without a test"
    for path, name in tests:
        assert name in defined_tests(path), f"{path}::{name} does not exist"

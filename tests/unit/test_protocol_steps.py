"""docs/protocol.md is the one statement of the protocols, and the code cites its steps
("C5: the commit point"): every step there is cited somewhere in the package, and every
step the package cites is there."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: A step id: a letter of a protocol table, its number, and a letter for a sub-step (C6a).
STEP = r"[BCFIRT][0-9]a?"


def steps_in_protocol() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    return set(re.findall(rf"^\| ({STEP}) \|", text, re.M))


def cited_in_code() -> dict[str, set[str]]:
    """step id -> the modules that cite it; a range "R1-R5" cites each step in it."""
    cited: dict[str, set[str]] = {}
    for path in (ROOT / "raystream").rglob("*.py"):
        text = path.read_text()
        for first, last in re.findall(rf"\b({STEP})-({STEP})\b", text):
            if first[0] == last[0]:
                for n in range(int(first[1]), int(last[1]) + 1):
                    cited.setdefault(f"{first[0]}{n}", set()).add(path.name)
        for step in re.findall(rf"\b({STEP})\b", text):
            cited.setdefault(step, set()).add(path.name)
    return cited


def test_the_protocol_has_its_steps():
    steps = steps_in_protocol()
    assert {"C1", "C5", "C6a", "R3", "T4", "F2", "B5", "I6"} <= steps, sorted(steps)


def test_every_step_of_the_protocol_is_cited_in_the_code():
    cited = cited_in_code()
    assert sorted(steps_in_protocol() - set(cited)) == []


def test_every_step_the_code_cites_is_in_the_protocol():
    unknown = {step: sorted(where) for step, where in cited_in_code().items() if step not in steps_in_protocol()}
    assert unknown == {}

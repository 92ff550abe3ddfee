"""The audit digest is order-independent and sees duplicates; lines compare both sides."""
from hypothesis import given
from hypothesis import strategies as st

from raystream._runtime.state.tally import Tally, id_digest
from raystream.audit import AuditLine


@given(st.lists(st.integers(), max_size=50), st.randoms())
def test_digest_ignores_order(ids, rnd):
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    assert id_digest(ids) == id_digest(shuffled)


@given(st.lists(st.integers(), min_size=1, max_size=50))
def test_a_duplicate_or_a_loss_changes_the_digest(ids):
    assert id_digest(ids + ids[:1]) != id_digest(ids)  # XOR would cancel a duplicate out
    assert id_digest(ids[1:]) != id_digest(ids)


def test_tally_accumulates_across_batches_and_resumes():
    t = Tally(lambda r: r["id"])
    t.add([{"id": 1}, {"id": 2}])
    resumed = Tally(lambda r: r["id"], *t.state())
    resumed.add([{"id": 3}])
    assert resumed.state() == (3, id_digest([1, 2, 3]))
    assert Tally(None, 5, 0).state() == (5, 0)


def test_a_line_matches_only_when_counts_and_digests_agree():
    assert AuditLine("r", 1, 3, 7, 3, 7).matches
    assert not AuditLine("r", 1, 3, 7, 3, 8).matches
    assert not AuditLine("r", 1, 3, 7, 4, 7).matches

"""The in-process hot loop of the word count runs without Ray and counts every word once."""
from raystream.bench.hotloop import hot_loop, main


def test_the_hot_loop_counts_every_word_and_the_mini_batch_mode_sends_fewer_records():
    every = hot_loop(20_000)
    assert every["words"] == every["sink_records"] == 20_000
    assert every["cpu_s"] > 0 and set(every["stages_cpu_s"]) >= {"source", "unpickle"}
    last = hot_loop(20_000, emit="last")
    assert last["words"] == 20_000 and 0 < last["sink_records"] < 20_000


def test_the_command_prints_its_figures(capsys):
    main(["--words", "2000", "--python-gc"])
    assert "words per CPU second" in capsys.readouterr().out

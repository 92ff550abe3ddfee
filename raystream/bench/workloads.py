"""The benchmark workloads, built with the public API only, and their single-process
baselines (the same computation as a plain Python loop, or pyarrow for the Arrow ones).

`workloads()` names every one. They live by purpose: modes.py (`Mode`, `Workload`),
synthetic.py (word count and keyed state over the bench's own generators, and the
sources and sinks they share), job_files.py (billing and Nexmark, the jobs in jobs/).
The names below stay importable from here.
"""
from __future__ import annotations

import os

from raystream.bench import nexmark_arrow
from raystream.bench.job_files import (DEDUP_WITHIN, JOBS, NEXMARK, billing_arrow_baseline, billing_arrow_job,
                                       billing_baseline, billing_job,
                                       nexmark_baseline, nexmark_config, nexmark_job, nexmark_module)
from raystream.bench.modes import (DEDUP_MODES, MODES, TTL_MODES, TTL_SECONDS, Mode, Workload, records_in,
                                   records_out)
from raystream.bench.synthetic import (SLOW_SINK_RATE, VOCAB, WORDS_PER_LINE, ChangedStateSink, KeyLoad,
                                       MeasureSink, changed_state_job, count_state, count_update, count_words,
                                       load_key, make_text, state_baseline, state_job, ttl_job, wordcount_arrow_baseline,
                                       wordcount_baseline, wordcount_job)


#: Events of the Nexmark queries over Arrow (8M for the others)
ARROW_EVENTS = {"q0": 60_000_000, "q1": 60_000_000, "q2": 60_000_000, "q3": 20_000_000}


def workloads(directory: str, scale: float = 1.0) -> dict[str, Workload]:
    """Every workload, sized by `scale` (1.0: the suite runs in about 40 minutes on 2 cores)."""
    def n(x: float) -> int:
        return max(1_000, int(x * scale))

    text = os.path.join(directory, "text")
    words = n(4_000_000)
    os.makedirs(text, exist_ok=True)
    made: dict[str, int] = {}

    def text_ready() -> str:  # written the first time a word-count workload runs
        if "words" not in made:
            made["words"] = make_text(text, words)
        return text

    # The Arrow word counts read 4M words in about a second: too short for a periodic
    # checkpoint, so they get six times as many, written the first time one runs.
    text_arrow, words_arrow = os.path.join(directory, "text-arrow"), n(96_000_000)
    os.makedirs(text_arrow, exist_ok=True)

    def arrow_text_ready() -> str:
        if "arrow" not in made:
            made["arrow"] = make_text(text_arrow, words_arrow)
        return text_arrow

    out = os.path.join(directory, "billing-out")
    found: dict[str, Workload] = {
        "wordcount": Workload("wordcount", words, lambda m, s: wordcount_job(text_ready(), m, s, vectorized=False),
                              records_in("by_word"), lambda: wordcount_baseline(text_ready())),
        "wordcount_minibatch": Workload("wordcount_minibatch", words, lambda m, s: wordcount_job(
            text_ready(), m, s, vectorized=False, emit="last"), records_in("by_word"),
            lambda: wordcount_baseline(text_ready())),
        "wordcount_combine": Workload("wordcount_combine", words, lambda m, s: wordcount_job(
            text_ready(), m, s, vectorized=False, emit="last", combine=True), records_in("by_word"),
            lambda: wordcount_baseline(text_ready())),
        "wordcount_arrow": Workload("wordcount_arrow", words_arrow,
                                    lambda m, s: wordcount_job(arrow_text_ready(), m, s, vectorized=True),
                                    records_out("lines", WORDS_PER_LINE),
                                    lambda: wordcount_arrow_baseline(arrow_text_ready())),
        "wordcount_columnar": Workload("wordcount_columnar", words_arrow,
                                       lambda m, s: wordcount_job(arrow_text_ready(), m, s, vectorized=True,
                                                                  columnar=True),
                                       records_out("lines", WORDS_PER_LINE),
                                       lambda: wordcount_arrow_baseline(arrow_text_ready())),
        "billing": Workload("billing", n(600_000), lambda m, s: billing_job(n(600_000), m, s, out),
                            records_out("usage"), lambda: billing_baseline(n(600_000))),
        # at-least-once with a dedup step by event id against exactly-once without: same output
        "billing_dedup": Workload("billing_dedup", n(600_000), lambda m, s: billing_job(n(600_000), m, s, out),
                                  records_out("usage"), lambda: billing_baseline(n(600_000)), modes=DEDUP_MODES),
        # the same totals and invoices with columnar steps, against pyarrow in one process;
        # 12M events: about 10 s at 1M events/s, so that a run holds several checkpoints
        "billing_arrow": Workload("billing_arrow", n(12_000_000),
                                  lambda m, s: billing_arrow_job(n(12_000_000), m, s, out + "-arrow"),
                                  records_out("usage"), lambda: billing_arrow_baseline(n(12_000_000))),
    }
    for name, keys, events in (("state_1k", 1_000, 3_000_000), ("state_1m", 1_000_000, 3_000_000),
                               ("state_5m", 5_000_000, 8_000_000)):
        k, e = max(10, int(keys * min(scale, 1.0))), n(events)
        found[name] = Workload(name, e, lambda m, s, e=e, k=k: state_job(e, k, m, s), records_out("load"),
                               lambda e=e, k=k: state_baseline(e, k), latency=True)
    e = n(12_000_000)  # keys of 10 records each, held forever against for TTL_SECONDS: a run of ~10 TTLs
    found["state_ttl"] = Workload("state_ttl", e, lambda m, s: ttl_job(e, 10, m, s), records_out("load"),
                                  lambda: state_baseline(e, e // 10), modes=TTL_MODES, state_step="count")
    e = n(1_200_000)  # the slow sink: memory must stay flat while the source is held back
    found["slow_sink"] = Workload("slow_sink", e, lambda m, s: state_job(e, 1_000, m, s, sink_rate=SLOW_SINK_RATE),
                                  records_out("load"), lambda: e / (2 * SLOW_SINK_RATE), latency=True)
    for q in NEXMARK:
        if (JOBS / "nexmark" / f"{q}.py").is_file():
            e = n(600_000)
            found[f"nexmark_{q}"] = Workload(f"nexmark_{q}", e, lambda m, s, q=q, e=e: nexmark_job(q, e, m, s),
                                             records_out("events"), lambda q=q, e=e: nexmark_baseline(q, e))
    for q in NEXMARK:  # over Arrow, against pyarrow over the columnar generator
        if (JOBS / "nexmark" / "columnar" / f"{q}.py").is_file():
            # sized for a steady state of several 1 s checkpoints at the rates measured on
            # two cores (q0-q2 7-13M events/s, q3 3M, q4-q8 about 1M)
            e = n(ARROW_EVENTS.get(q, 8_000_000))
            found[f"nexmark_{q}_arrow"] = Workload(
                f"nexmark_{q}_arrow", e, lambda m, s, q=q, e=e: nexmark_job(f"columnar/{q}", e, m, s),
                records_out("events"), lambda q=q, e=e: nexmark_arrow.timed(q, nexmark_config(e)))
    return found


__all__ = ["DEDUP_MODES", "DEDUP_WITHIN", "JOBS", "MODES", "NEXMARK", "SLOW_SINK_RATE", "TTL_MODES", "TTL_SECONDS",
           "VOCAB", "WORDS_PER_LINE", "ChangedStateSink", "KeyLoad", "MeasureSink", "Mode", "Workload", "billing_arrow_baseline",
           "billing_arrow_job", "billing_baseline", "billing_job",
           "changed_state_job", "count_state", "count_update", "count_words", "load_key", "make_text",
           "nexmark_baseline", "nexmark_config", "nexmark_job", "nexmark_module", "state_baseline", "state_job",
           "ttl_job", "wordcount_arrow_baseline", "wordcount_baseline", "wordcount_job", "workloads"]

"""The main job: a word count over generated text as a map / shuffle / reduce DAG."""

from __future__ import annotations

import random
import sys
import time
import zlib
from collections import Counter

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


def generate_and_count(chunk: int, words_per_chunk: int, partitions: int) -> list:
    """Map: make a chunk of text, count its words, split the counts by partition."""
    rng = random.Random(chunk)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]  # Zipf-like
    text = " ".join(rng.choices(WORDS, weights, k=words_per_chunk))
    buckets = [dict() for _ in range(partitions)]
    for word, count in Counter(text.split()).items():
        buckets[zlib.crc32(word.encode()) % partitions][word] = count
    return buckets


def merge_partition(partition: int, *mapped: list) -> dict:
    """Reduce: merge one partition of every map output."""
    total: Counter = Counter()
    for buckets in mapped:
        total.update(buckets[partition])
    return dict(total)


def top_words(n: int, *partitions: dict) -> list:
    """Final stage: the ``n`` most frequent words over all partitions."""
    total: Counter = Counter()
    for part in partitions:
        total.update(part)
    return total.most_common(n)


def run_demo(workers: int | None = None, chunks: int = 64, words_per_chunk: int = 20_000,
             partitions: int = 8, progress: bool = True, out=sys.stdout, profile: bool = False) -> list:
    """Run the word count on a local cluster and print the most frequent words; with
    ``profile``, also the top 15 functions of the workers' CPU profile."""
    from . import ExecutionContext, FuncTask, Job

    started = time.perf_counter()
    with ExecutionContext.local(workers=workers) as ctx:
        count = ctx.await_workers()
        print(f"local cluster: {count} workers ready in {time.perf_counter() - started:.2f}s", file=out)
        mapped = [FuncTask(ctx, ("map", i), generate_and_count, (i, words_per_chunk, partitions))
                  for i in range(chunks)]
        reduced = [FuncTask(ctx, ("reduce", p), merge_partition, (p, *mapped))
                   for p in range(partitions)]
        final = FuncTask(ctx, ("top",), top_words, (10, *reduced))
        job = Job(ctx, [*mapped, *reduced, final], name="word-count",
                  desc=f"word count over {chunks * words_per_chunk:,} generated words")
        if profile:
            ctx.cpu_profiling.start()
        t0 = time.perf_counter()
        # only the reduced partitions and the top words come to the driver: the mapped
        # chunks stay on the workers for the reducers, and are dropped when the job ends
        *partition_counts, top = ctx.execute(job, progress=progress, results=[*reduced, final])
        took = time.perf_counter() - t0
        if profile:
            ctx.cpu_profiling.stop()
        total_words = sum(sum(counts.values()) for counts in partition_counts)
        print(f"{job.desc}: {len(job.tasks)} tasks in {took:.2f}s on "
              f"{len({t.executed_on_last() for t in job.tasks})} workers", file=out)
        print(f"counted {total_words:,} words; the most frequent:", file=out)
        for word, n in top:
            print(f"  {word:<10} {n:>9,}", file=out)
        assert total_words == chunks * words_per_chunk, "word count lost words"
        if profile:
            print(file=out)
            ctx.cpu_profiling.print_stats(max_rows=15, file=out)
        return top

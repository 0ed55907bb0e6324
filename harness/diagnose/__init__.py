"""The diagnosis: what stopped a run (or what will), named from evidence the kernel and the
processes give, never guessed. `kernel` reads the TCP stack's counters and queues, `process` finds
the processes behind a listening port and reads their limits, and `rules` (pure) turns what was
read into one verdict: the limit, its evidence, and the one-line fix."""

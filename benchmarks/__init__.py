"""lstmkit's benchmark suite: ``python -m benchmarks.run`` (``make bench``).

The modules: :mod:`.cases` (shapes, rows, FLOP counts), :mod:`.builders` (the timed closures),
:mod:`.timing` (timer and peak memory), :mod:`.targets` (the issue's targets, evaluated on the
measured ratios), :mod:`.report` (machine description, JSON and Markdown) and :mod:`.streaming`
(the adapter to ``lstmkit.streaming``). See ``docs/benchmarks.md``.
"""

"""vidcap's measurements, sorted by what they are for. Run each as a module from the repository
root (``.venv/bin/python -m bench.speed.job1``): the scripts import the installed ``vidcap`` and
their shared helper ``bench.common``; none edits ``sys.path``.

- ``bench/speed/``: speed benchmarks, ratios against baselines measured in the same run; ``make
  bench`` runs all of them (docs/benchmarks.md).
- ``bench/acceptance/``: the GPU acceptance check, ``make gpu-check`` (docs/benchmarks.md, "The GPU
  check").
- ``bench/results/``: the results reporter, the README's tables and figure from ``make demo`` runs
  at several seeds (docs/real-world.md).
- ``bench/experiments/``: experiment drivers whose findings are written in docs/ (a driver is kept
  only while a test runs it; one-offs are removed once their findings are in docs/, and stay in the
  git history).

Each script writes its report beside itself (``<name>_report.json``, often a ``.md`` and a ``.png``).
"""

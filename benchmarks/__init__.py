"""On-device benchmarks: ``fusionedge bench`` (MLPerf LoadGen scenarios, engine-only and end-to-end,
eager baseline, system fingerprint, results.json / report.md / plots, ``bench compare``) and the
pytest-benchmark component suites in ``bench_*.py``.

Modules (import what you use; nothing heavy is imported here):

``harness``      :class:`~fusionedge.benchmarks.harness.BenchConfig`, ``plan_benchmark``, ``run_benchmark``
``loadgen``      one LoadGen test on a Python system under test, and its logs parsed
``stages``       the engine-only and end-to-end pipelines and their stage timings (the fused model's
                 inputs, or an imported model's declared one)
``eager``        the PyTorch eager baseline (torch imported lazily)
``accuracy``     LoadGen AccuracyOnly over a labelled data set, scored as ``fusionedge eval``
``memory``       peak resident memory per configuration
``fingerprint``  ``collect_fingerprint``: CPU, GPU, Jetson, software, thermal, power
``energy``       ``EnergySampler``: power, temperatures and clocks during each configuration (J/inference,
                 throttling)
``record``       one configuration's ``results.json`` record from its LoadGen outcome
``results``      the versioned ``results.json`` schema, validation, ratios
``report``       ``report.md`` and PNG plots
``compare``      ``fusionedge bench compare``
``cli``          ``add_bench_parser`` for the ``fusionedge`` command line
"""

__all__: list[str] = []

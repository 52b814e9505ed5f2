"""The ``fusionedge`` command line: every verb, its options and its output (entry point: ``main.main``)."""

"""Scene question answering, the training side: questions from the data, a question reader on top of a
frozen perception student, its training, evaluation (per type, ablations, question-only baseline) and
report. The runtime side (tokenizer wrapper, ``Perception.ask``) lives in ``fusionedge.sdk``."""

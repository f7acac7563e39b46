"""AdaFilter itself: the gated convolution and gated BN, the recurrent gate network, the conversion of a
backbone into an ``AdaFilterModel`` (``network``), gate statistics and the evaluation collector (``gates``) and
the per-image gate record (``gate_record``).

May import: ``core``.
"""

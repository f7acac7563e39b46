"""AdaFilter itself: the gated convolution and gated BN, the recurrent gate network, the conversion of a
backbone into an ``AdaFilterModel`` (``network``), and gate statistics and per-image gate records (``gates``).

May import: ``core``.
"""

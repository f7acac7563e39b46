"""AdaFilter study kit: adaptive fine-tuning methods, one training loop, gate statistics and tables."""

__version__ = "0.1.0"

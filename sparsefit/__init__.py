"""SparseFit: few-shot sparse fine-tuning of language models that predict and explain.

Importing the package is cheap: torch and transformers are imported only by the modules that need them,
so `sparsefit.predictions` (the contract with the annotation app) works without torch.
"""

__version__ = "0.1.0"

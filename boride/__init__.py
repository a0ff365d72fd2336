"""boride: an execution coordinator for CyanPrint-style code-generation pipelines."""

__version__ = "0.1.0"

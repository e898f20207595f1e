"""tisdpo: Direct Preference Optimization with estimated token-level importance weights."""

__version__ = "0.1.0"

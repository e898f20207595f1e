"""The real-model sentiment study (``tisdpo demo --real-study``): SmolLM2 learns critical text; VADER is the gold reward."""

"""Base models: the embedded tiny models, the loading path and the weight-free ModelSpec."""

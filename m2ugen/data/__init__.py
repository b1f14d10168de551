"""Training data: published dataset formats → `Example` records, synthetic data, batching."""

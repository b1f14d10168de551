"""Reusable nn blocks: encoders, adapters, projector, the injected LLM, music decoders."""

"""Code shared by every dataset pipeline: the step runner, captioners, the chat LLM,
music statistics (tempo/key) and the pair finder."""

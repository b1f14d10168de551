"""Code shared by every dataset pipeline: the step runner, captioners (music: an
audio-language or m2ugen model), the chat LLM, music statistics (tempo/key), the pair finder."""

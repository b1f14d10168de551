"""The chat LLM that turns captions into instructions and answers (batched, greedy).

Any `AutoModelForCausalLM` hub id or directory; prompts go through the tokenizer's chat
template when it has one (instruct models), else are used as plain text. Prompt templates
live in files (each dataset's `prompts/`) and use `str.format` fields such as
`{music_caption}`.
"""

from __future__ import annotations

from pathlib import Path

from datasets_gen.common.records import DatasetGenError
from datasets_gen.common.trust import loading_model

CHAT_LLM = "Qwen/Qwen2.5-7B-Instruct"


def load_template(path: Path, fields: set[str]) -> str:
    """Read a prompt template and check it uses only the known `{fields}`."""
    import string

    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise DatasetGenError(f"{path}: cannot read the prompt template ({e})") from e
    used = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    if not used <= fields:
        raise DatasetGenError(f"{path}: unknown template fields {sorted(used - fields)}; "
                              f"available: {sorted(fields)}")
    return text


class ChatLLM:
    def __init__(self, name: str, device: str, max_new_tokens: int = 128,
                 system: str | None = None, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        # an auto_map in the model's configs runs only with --trust-remote-code
        with loading_model("chat LLM", name):
            self.tokenizer = AutoTokenizer.from_pretrained(
                name, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, trust_remote_code=trust_remote_code).to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _text(self, prompt: str) -> str:
        if not self.tokenizer.chat_template:
            return prompt
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, prompts: list[str]) -> list[str]:
        """One reply per prompt (stripped; may be empty — callers decide)."""
        import torch

        templated = bool(self.tokenizer.chat_template)
        enc = self.tokenizer([self._text(p) for p in prompts], return_tensors="pt",
                             padding=True, add_special_tokens=not templated).to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        new = ids[:, enc["input_ids"].shape[1]:]
        return [" ".join(t.split()) for t in
                self.tokenizer.batch_decode(new, skip_special_tokens=True)]

"""The conversation template, shared by training data and chat (STYLE.md §16).

The prompt is the published Alpaca template (ORIGINAL_M2UGEN.md §2); earlier turns are
kept in the same format and the oldest are dropped first when the context is full. A
reply ends at a new "\\n###" (STOP_TEXT), which the model would start the next turn with.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2ugen.errors import ChatError

STOP_TEXT = "\n###"


@dataclass
class Turn:
    user: str
    assistant: str  # as generated, [AUD] tokens included: the model sees its own replies



def format_prompt(template: str, history: list[Turn], instruction: str) -> str:
    """The template applied to the history and the new instruction.

    The first turn is exactly the published single-turn prompt; later turns repeat the
    part of the template from the "### Instruction:" line on.
    """
    pre, post = template.split("{instruction}", 1)
    cut = pre.rfind("\n\n")
    turn_pre = "\n\n" + (pre[cut + 2:] if cut >= 0 else pre)
    parts = []
    for i, turn in enumerate([*history, Turn(instruction, "")]):
        parts.append((pre if i == 0 else turn_pre) + turn.user + post + turn.assistant)
    return "".join(parts)


def build_prompt_ids(tokenizer, template: str, history: list[Turn], instruction: str,
                     budget: int) -> tuple[list[int], int]:
    """Token ids of the prompt (BOS first) fitting `budget` tokens; drops oldest turns first.

    Returns (ids, number of dropped turns).
    """
    for dropped in range(len(history) + 1):
        text = format_prompt(template, history[dropped:], instruction)
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
        if len(ids) <= budget:
            return ids, dropped
    raise ChatError(f"the message is {len(ids)} tokens but only {budget} fit in the context "
                    "with the requested reply length; shorten it or lower --max-new-tokens")

"""The MUCaps pipeline: run its numbered steps in order with one --out folder (README.md)."""

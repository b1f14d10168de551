"""Dataset generation pipelines (MUCaps, MUEdit, MUImage, MUVideo): numbered, restartable steps.

Run a step as ``python -m datasets_gen.<Dataset>.<NN_step> --out WORKDIR …``; see README.md.
"""

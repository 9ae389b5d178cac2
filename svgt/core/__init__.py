"""The base layer: errors, atomic file io, the transient-error rule, URL redaction, params, PyPI wheels.

Imports nothing else from svgt (every other package builds on this one), and no torch.
"""

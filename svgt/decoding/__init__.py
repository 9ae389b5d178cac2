"""Decoding with a frozen backbone: the batched, KV-cached guided loop (``loop``), shared prompt passes
(``prompt_pass``), the uncached reference it is tested against (``reference``), and value-module guidance
(``guidance``). Builds on core, backbone and model; never imports baselines, training, eval or registry.
"""

"""The MLflow model registry: register gate-passed modules, move aliases, resolve ``models:/`` URIs.

``uri`` resolves where a module lives (MLflow is imported only for ``models:/`` URIs), ``versions`` registers and
promotes, ``build_inputs`` records what a module was built from. Nothing below this package imports it: the
backbone, model and decoding layers never know about MLflow.
"""

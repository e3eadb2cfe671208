"""Inference, apart from training: the Python API (``vidcap.caption.api``: ``load(DIR).caption(paths)``),
the ``caption`` command (``cli``) and ``caption serve`` (``serve``), all over the same captioner."""

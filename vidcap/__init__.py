"""vidcap: end-to-end video captioning with multitask reinforcement learning (Li & Gong, WACV 2019).

One import namespace over the repository's rooms, each with one job:

- ``vidcap.pipeline``: captioned videos -> frame shards, attributes, CIDEr-D df, vocabulary (Dask jobs)
- ``vidcap.shards``: the on-disk format of a build -- layout, shard writer and reader, stores, version
- ``vidcap.model``: the captioners (registry of architectures and backbones), checkpoints, model folders
- ``vidcap.train``: the three stages, ``train eval``, ``probe``, ``ablate``, ``export``
- ``vidcap.evalkit``: the paper's metrics and the CIDEr-D reward
- ``vidcap.caption``: inference -- the Python API, the ``caption`` command and ``caption serve``
- this package's own modules: what every room shares (errors, atomic files, bounded JSON, caption
  text, token ids, the built-in world's grammar)

``import vidcap`` is cheap (torch loads on first use): ``vidcap.load(DIR).caption([...])`` -- the
Python API of caption/api.py (docs/api.md), the same captions as the ``caption`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "VideoError", "__version__", "load"]
_API = ("Caption", "Captioner", "VideoError", "load")

if TYPE_CHECKING:
    from vidcap.caption.api import Caption, Captioner, VideoError, load


def __getattr__(name: str) -> Any:
    # Lazy: `import vidcap` must not pull in torch for a user who only wants `vidcap.evalkit`.
    if name in _API:
        from vidcap.caption import api

        return getattr(api, name)
    raise AttributeError(f"module 'vidcap' has no attribute {name!r}")

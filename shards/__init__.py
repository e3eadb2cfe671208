"""The on-disk format of a build, in one home (as mosaicml/streaming keeps its format): every file
name and schema (``layout``), the shard writer and its reader side by side (``writer``, ``reader``),
where a build's bytes come from (``store``: a folder, a URL, an object store, a pipe), and the
contract version. ``docs/shards.md`` is the same contract for programs that are not vidcap."""

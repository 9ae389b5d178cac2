"""Hidden-state extraction: the backbone's layer-l* states for every example, as a sharded safetensors store.

``shards`` computes one shard, ``ray_shards`` spreads shards over Ray Data workers, ``step`` is the `svgt extract`
step, ``store`` reads what it wrote. Builds on core, backbone and data; never imports model or anything above.
"""

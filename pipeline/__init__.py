"""Data: ImageNet or the demo set -> WebDataset shards (build_shards.py), and DALI loaders over them (loader.py).

Importing this package imports nothing heavy; `pipeline.loader` is the only module that needs DALI."""

"""Command-line tools apart from the compute core: benchmarks, demos, OpenNMT-py data preparation, evaluation, the
patch command and plotting."""

"""Small synthetic worlds that let a real CoCa train on a laptop: `shapes` (images, tiny_data/)
and `moving_shapes` (clips). numpy only."""

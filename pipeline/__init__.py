"""vidcap data pipeline: captioned videos -> WebDataset frame shards, attributes, CIDEr-D df, vocabulary."""

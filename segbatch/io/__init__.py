"""Storage and decoding: fsspec access, listing, images, labels."""

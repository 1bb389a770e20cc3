"""Images in: datasets, image folders and their decoded cache, the batch stream, and augmentation."""

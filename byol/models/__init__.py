"""Encoders and heads: our ResNets, the torchvision/timm zoo, norms, convolutions, MLP heads, synchronised
batch norm."""

"""Building blocks the methods add around a frozen timm model."""

"""fedmed: privacy-preserving federated learning for medical imaging (Flower, MONAI, Opacus, TenSEAL)."""

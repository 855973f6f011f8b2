"""COSDD engine: networks, training, inference, data and model files (no Qt, no napari)."""

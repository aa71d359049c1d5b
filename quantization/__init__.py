"""Quantization toolkit: k-means weight sharing (more to come: linear quantization, a real int8 backend)."""

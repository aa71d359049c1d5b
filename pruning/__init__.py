"""Pruning toolkit: fine-grained magnitude pruning, channel pruning, sensitivity scans. Transforms models only."""

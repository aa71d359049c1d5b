"""Images, homographies and pairs: everything the evaluation and training read."""

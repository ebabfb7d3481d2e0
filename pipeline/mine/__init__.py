"""Negative mining: dense (retrieval), BM25 (STS) and label/example sampling (classification, clustering)."""

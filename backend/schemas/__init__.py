"""Pydantic request and response models of the HTTP contract."""

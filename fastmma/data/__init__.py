"""Datasets and tokenisation helpers."""

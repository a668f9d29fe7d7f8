"""Prefect flows: curate, train, render, evaluate."""

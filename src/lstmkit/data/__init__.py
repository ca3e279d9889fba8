"""Data: synthetic long-memory tasks (more readers, samplers and collate come with the toolkit)."""

from .synthetic import adding_problem, copy_memory

__all__ = ["adding_problem", "copy_memory"]

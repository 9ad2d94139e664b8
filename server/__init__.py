"""Coordinator side: the ServerApp, run directory and coordinator CLI."""

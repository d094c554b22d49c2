"""Gradio UI. Builds components and turns their values into backend requests; no torch here."""

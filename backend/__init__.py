"""Backend: models, generation, storage. Never imports gradio."""

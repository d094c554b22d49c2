"""ControlNet built in: preprocessors (sd-webui-controlnet's names and parameters), control map fitting, and the
ControlNet model files. Sits beside prompts/upscale/plugins: imports core and models only."""

"""Which diffusers pipeline class runs each (family, task): read by the loader (to import them ahead of the first
job) and by generation (to build a job's pipeline)."""

# diffusers class names, looked up when a job runs (importing the pipelines takes seconds; the page need not wait)
PIPELINE_CLASSES = {
    ("sd", "txt2img"): "StableDiffusionPipeline", ("sd", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline", ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline", ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
    ("flux", "txt2img"): "FluxPipeline", ("flux", "img2img"): "FluxImg2ImgPipeline",
    ("flux", "inpaint"): "FluxInpaintPipeline", ("flux-fill", "inpaint"): "FluxFillPipeline",
    ("sd3", "txt2img"): "StableDiffusion3Pipeline", ("sd3", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("sd3", "inpaint"): "StableDiffusion3InpaintPipeline",
}

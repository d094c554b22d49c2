"""Bad input gets a clear error that names the field and the allowed values."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.core.requests import RequestError, Txt2ImgRequest, build_request
from backend.core.samplers import SAMPLERS, build_scheduler, resolve_sampler


@pytest.mark.parametrize("values,field,message", [
    ({"width": 500}, "width", "multiple of 8"),
    ({"height": 4096}, "height", "between 64 and 2048"),
    ({"width": 0}, "width", "between 64 and 2048"),
    ({"steps": 0}, "steps", "between 1 and 150"),
    ({"steps": 151}, "steps", "between 1 and 150"),
    ({"cfg_scale": float("nan")}, "cfg_scale", "finite"),
    ({"cfg_scale": float("inf")}, "cfg_scale", "finite"),
    ({"cfg_scale": 31}, "cfg_scale", "between 1.0 and 30.0"),
    ({"seed": -2}, "seed", "between -1 and 4294967295"),
    ({"batch_size": 9}, "batch_size", "between 1 and 8"),
    ({"n_iter": 0}, "n_iter", "between 1 and 100"),
    ({"sampler_name": "Eulr"}, "sampler_name", "unknown sampler 'Eulr'; choose one of DPM++ 2M"),
    ({"sampler_name": "DPM fast"}, "sampler_name", "cannot be honoured"),
    ({"scheduler": "Wavy"}, "scheduler", "unknown schedule type 'Wavy'"),
    ({"sampler_name": "DDIM", "scheduler": "Karras"}, "scheduler", "not available for sampler 'DDIM'"),
    ({"steps": "many"}, "steps", "valid integer"),
    ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
])
def test_bad_values_name_the_field(values, field, message):
    with pytest.raises(RequestError) as error:
        build_request(Txt2ImgRequest, values)
    assert error.value.field == field
    assert message in str(error.value)


def test_requests_are_frozen():
    request = build_request(Txt2ImgRequest, {"prompt": "x"})
    with pytest.raises(ValidationError):
        request.steps = 3


def test_old_combined_sampler_names_and_aliases():
    assert resolve_sampler("DPM++ 2M Karras", "Automatic") == ("DPM++ 2M", "Karras")
    assert resolve_sampler("k_euler_a", "Automatic") == ("Euler a", "Uniform")
    assert resolve_sampler("DPM++ 2M SDE", "Automatic") == ("DPM++ 2M SDE", "Exponential")


def test_every_listed_sampler_builds_its_diffusers_scheduler():
    base = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon"}
    karras = build_scheduler("DPM++ 2M", "Karras", base)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler" and karras.config.use_karras_sigmas
    assert build_scheduler("DPM++ 3M SDE", "Automatic", base).config.solver_order == 3
    for name, spec in SAMPLERS.items():
        scheduler = build_scheduler(name, "Automatic", base)
        assert type(scheduler).__name__ == spec.scheduler_class
        scheduler.set_timesteps(10)
        assert len(scheduler.timesteps) >= 10

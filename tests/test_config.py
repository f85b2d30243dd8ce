import numpy as np
import pytest

from fastmma import MMAConfig


def test_defaults_match_lavin():
    config = MMAConfig()
    assert (config.rank, config.groups, config.experts, config.scale, config.temperature, config.dropout) == \
        (8, 2, 2, 1.0, 10.0, 0.1)
    assert config.targets == ("attn",) and config.num_modalities == 2


@pytest.mark.parametrize("kwargs, field", [
    (dict(rank=6, groups=4), "rank"),
    (dict(rank=0), "rank"),
    (dict(groups=0), "groups"),
    (dict(experts=0), "experts"),
    (dict(targets=("attn", "mlp")), "targets"),
    (dict(targets=()), "targets"),
    (dict(dropout=1.0), "dropout"),
    (dict(temperature=0.0), "temperature"),
    (dict(num_modalities=0), "num_modalities"),
    (dict(scale=float("nan")), "scale"),                   # would make every output NaN
    (dict(scale="1"), "scale"),                            # would fail deep inside a kernel
    (dict(scale=np.float32(1.0)), "scale"),                # JSON cannot save it
    (dict(rank=True), "rank"),
    (dict(rank=8.0), "rank"),
    (dict(dropout=None), "dropout"),
    (dict(temperature="10"), "temperature"),
    (dict(targets=None), "targets"),
    (dict(recompute_swiglu="no"), "recompute_swiglu"),     # a non-empty string would count as on
    (dict(chunked_loss=1), "chunked_loss"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"MMAConfig.{field}"):
        MMAConfig(**kwargs)


def test_hidden_size_not_divisible_by_groups():
    with pytest.raises(ValueError, match="MMAConfig.groups.*hidden size 100"):
        MMAConfig(rank=8, groups=8).check_hidden_size(100)


def test_round_trip_and_unknown_fields():
    config = MMAConfig(rank=4, targets=("attn", "ffn"))
    assert MMAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        MMAConfig.from_dict({"rank": 4, "alpha": 2})


@pytest.mark.parametrize("kwargs, field", [
    (dict(visual_every="4"), "visual_every"),
    (dict(visual_every=0), "visual_every"),
    (dict(visual_hidden=True), "visual_hidden"),
    (dict(image_prefix=None), "image_prefix"),
    (dict(system_prompt=3), "system_prompt"),
    (dict(standardize_visual_features="yes"), "standardize_visual_features"),
    (dict(llm_adapter="rank 8"), "llm_adapter"),
])
def test_lavin_config_names_the_bad_field(kwargs, field):
    from fastmma.lavin import LaVINConfig

    with pytest.raises(ValueError, match=f"LaVINConfig.{field}="):
        LaVINConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown field"):
        LaVINConfig.from_dict({"visual_evry": 2})

from __future__ import annotations

import pytest
import torch

from plural.config import ConfigError
from plural.models import parse_model
from plural.registry import MODELS

TEXT_MODELS = ("char_rnn", "minilm_lora")
BUILT_IN = [name for name in MODELS.names() if name not in ("python", "cnn_family", *TEXT_MODELS)]
"""Single image/feature models (the model-heterogeneous family and the text models, which
read token ids, have their own tests)."""


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_every_model_builds_and_predicts_classes(name: str, shape: tuple[int, ...]) -> None:
    model = parse_model({"name": name}).build(shape, 7, seed=0)
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    spec = parse_model({"name": "lenet"})
    state = torch.get_rng_state().clone()
    a, b, c = (spec.build((1, 28, 28), 10, seed=s).state_dict() for s in (5, 5, 6))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fedavg_cnn_has_the_papers_parameter_count() -> None:
    # McMahan et al. 2017 report 1,663,370 parameters for their MNIST CNN.
    model = parse_model({"name": "cnn"}).build((1, 28, 28), 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 1_663_370


def test_fedavg_2nn_has_the_papers_parameter_count() -> None:
    # The 2NN (two hidden layers of 200) has 199,210 parameters.
    model = parse_model({"name": "mlp", "hidden": [200, 200]}).build((1, 28, 28), 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 199_210


def test_image_models_refuse_vector_input_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs image input"):
        parse_model({"name": "cnn"}).build((60,), 10, seed=0)


def test_model_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        parse_model({"name": "mlp", "hidden": [0]})
    with pytest.raises(ConfigError, match="unknown model"):
        parse_model({"name": "resnet9000"})


def test_python_placeholder_explains_itself() -> None:
    with pytest.raises(ConfigError, match=r"plural.run\(config, model=...\)"):
        parse_model({"name": "python"}).build((1, 8, 8), 10, seed=0)


def test_cnn_family_is_yi_et_al_five_cnns() -> None:
    family = parse_model({"name": "cnn_family"}).build((3, 32, 32), 10, seed=0)
    assert len(family.members) == 5
    for member, (c2, h1) in zip(
        family.members, [(32, 2000), (16, 2000), (32, 1000), (32, 800), (32, 500)], strict=True
    ):
        shapes = {n: tuple(t.shape) for n, t in member.state_dict().items()}
        assert shapes["body.0.weight"] == (16, 3, 5, 5)
        assert shapes["body.3.weight"] == (c2, 16, 5, 5)
        assert shapes["body.7.weight"] == (h1, c2 * 5 * 5)  # 32 -> 28 -> 14 -> 10 -> 5
        assert shapes["body.9.weight"] == (500, h1)
        assert shapes["head.weight"] == (10, 500)
        assert member(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert family.architecture_of(7) == (0, 1, 2, 3, 4, 0, 1)


def test_cnn_family_assignment_and_errors() -> None:
    spec = parse_model({"name": "cnn_family", "assignment": [2, 2, 5]})
    assert spec.build((1, 28, 28), 10, seed=0).architecture_of(5) == (1, 1, 4, 1, 1)
    with pytest.raises(ConfigError, match="from 1 to 5"):
        parse_model({"name": "cnn_family", "assignment": [6]})
    with pytest.raises(ConfigError, match="pair"):
        parse_model({"name": "cnn_family", "architectures": [[8, 16, 3]]})
    with pytest.raises(ConfigError, match="12x12"):
        parse_model({"name": "cnn_family"}).build((1, 8, 8), 10, seed=0)

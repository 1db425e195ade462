"""WiSE-FT weight interpolation (:mod:`dftnb.weight_interpolation`): the end points are the two models, the middle is
the float64 average, tied weights stay tied, and mismatched models or an alpha outside [0, 1] are refused."""

import pytest
import torch

from dftnb.weight_interpolation import interpolate_state_dicts, interpolate_weights


@pytest.fixture(scope="module")
def pair():
    """The tiny model and a copy whose every floating weight moved by a known random step."""
    from dftnb.lab.models import tiny_model

    base, _ = tiny_model(seed=0)
    tuned, _ = tiny_model(seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return base, tuned


def test_end_points_are_the_two_models(pair):
    base, tuned = pair
    for alpha, want in ((0.0, base), (1.0, tuned)):
        got = interpolate_weights(base, tuned, alpha).state_dict()
        for name, value in want.state_dict().items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=0)


def test_middle_is_the_float64_average_and_inputs_are_untouched(pair):
    base, tuned = pair
    before = {k: v.clone() for k, v in base.state_dict().items()}
    mixed = interpolate_weights(base, tuned, 0.25).state_dict()
    for name, b in base.state_dict().items():
        want = (0.75 * b.double() + 0.25 * tuned.state_dict()[name].double()).float()
        torch.testing.assert_close(mixed[name], want, rtol=0, atol=0)
        assert torch.equal(b, before[name])
    # the step is not zero, so the middle differs from both ends
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(mixed[name], base.state_dict()[name])
    assert not torch.equal(mixed[name], tuned.state_dict()[name])


def test_tied_embedding_stays_tied(pair):
    base, tuned = pair
    model = interpolate_weights(base, tuned, 0.5)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_logits_move_monotonically_between_the_ends(pair):
    """On a fixed input, the distance of the interpolated model's logits from the base model's grows with alpha."""
    base, tuned = pair
    ids = torch.tensor([[1, 17, 256, 9001, 42]])
    with torch.no_grad():
        ref = base(ids).logits
        dist = [float((interpolate_weights(base, tuned, a)(ids).logits - ref).abs().mean()) for a in (0, .25, .5, 1)]
    assert dist[0] == 0.0
    assert dist[1] < dist[2] < dist[3]


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_the_unit_interval_is_refused(pair, alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_weights(*pair, alpha)


def test_mismatched_models_are_refused(pair):
    from dftnb.lab.models import tiny_model

    base, _ = pair
    other, _ = tiny_model(seed=0, hidden_size=32)
    with pytest.raises(ValueError, match="fine-tuned from"):
        interpolate_weights(base, other, 0.5)
    sd = dict(base.state_dict())
    with pytest.raises(ValueError, match="not one architecture"):
        interpolate_state_dicts(sd, {k: v for k, v in sd.items() if "lm_head" not in k}, 0.5)
    ints = {"pos": torch.arange(4)}
    with pytest.raises(ValueError, match="non-floating"):
        interpolate_state_dicts(ints, {"pos": torch.arange(1, 5)}, 0.5)

"""PoseNet, the pose-conditioned UNet and the tiny model (SPEC section 5)."""
import copy
import math

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from mimicmotion.errors import ConfigError
from mimicmotion.models import PoseConditionedUNet, PoseNet
from mimicmotion.models.pose_net import he_normal_std
from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG, tiny_components, tiny_unet_config

POSE_NET_KEYS = [
    "scale",
    *[f"conv_layers.{i}.{p}" for i in range(0, 16, 2) for p in ("weight", "bias")],
    "final_proj.weight",
    "final_proj.bias",
]


# ------------------------------------------------------------------------------------------------ PoseNet
def test_pose_net_parameter_count_and_names():
    net = PoseNet()
    assert sum(p.numel() for p in net.parameters()) == 205_557
    assert sorted(net.state_dict()) == sorted(POSE_NET_KEYS)
    # Each conv is followed by SiLU, hence the even indices.
    assert all(isinstance(net.conv_layers[i], nn.SiLU) for i in range(1, 16, 2))


def test_pose_net_shapes_and_zero_output_at_init():
    torch.manual_seed(0)
    net = PoseNet()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = net(x)
    assert out.shape == (2, 320, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero projection: a fresh PoseNet leaves the UNet unchanged
    assert net.scale.item() == 2.0
    video = torch.rand(2, 3, 3, 64, 48)
    assert net(video).shape == (6, 320, 8, 6)
    assert PoseNet(noise_latent_channels=32)(x).shape == (2, 32, 8, 8)


def test_pose_net_five_dim_input_is_flattened_batch_major():
    torch.manual_seed(0)
    net = PoseNet(noise_latent_channels=8)
    nn.init.normal_(net.final_proj.weight)
    video = torch.randn(2, 3, 3, 16, 16)
    assert torch.equal(net(video), net(video.reshape(6, 3, 16, 16)))


def test_pose_net_output_is_projection_times_scale():
    net = PoseNet(noise_latent_channels=4)
    with torch.no_grad():
        net.final_proj.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))  # weight stays zero
    out = net(torch.randn(1, 3, 16, 16))
    expected = torch.tensor([2.0, -2.0, 1.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    assert torch.equal(out, expected)
    with torch.no_grad():
        net.scale.fill_(0.25)
    assert torch.equal(net(torch.randn(1, 3, 16, 16)), expected / 8)


def test_pose_net_initialisation():
    torch.manual_seed(0)
    net = PoseNet()
    convs = [m for m in net.conv_layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (3, 3, 3, 1, 1), (3, 16, 4, 2, 1), (16, 16, 3, 1, 1), (16, 32, 4, 2, 1),
        (32, 32, 3, 1, 1), (32, 64, 4, 2, 1), (64, 64, 3, 1, 1), (64, 128, 3, 1, 1),
    ]
    assert he_normal_std(convs[-1]) == pytest.approx(math.sqrt(2 / (3 * 3 * 64)))
    assert he_normal_std(convs[1]) == pytest.approx(math.sqrt(2 / (4 * 4 * 3)))
    for conv in convs:
        n = conv.weight.numel()
        std = conv.weight.std().item()
        # Sampling error of a standard deviation is about std / sqrt(2n); allow 5 of those.
        assert abs(std / he_normal_std(conv) - 1) < 5 / math.sqrt(2 * n), conv
        assert abs(conv.weight.mean().item()) < 5 * he_normal_std(conv) / math.sqrt(n)
        assert torch.count_nonzero(conv.bias) == 0
    # Not PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in) -> std sqrt(1/(3 fan_in))).
    assert convs[-1].weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
    assert torch.count_nonzero(net.final_proj.weight) == 0
    assert torch.count_nonzero(net.final_proj.bias) == 0


def test_pose_net_downscale_follows_the_vae():
    from mimicmotion.models.pose_net import CONV_SPECS, conv_specs, vae_downscale

    assert conv_specs(8) == CONV_SPECS  # the release's layout
    x = torch.zeros(1, 3, 64, 32)
    for downscale in (8, 4, 2):
        net = PoseNet(noise_latent_channels=4, downscale=downscale)
        assert net(x).shape == (1, 4, 64 // downscale, 32 // downscale) and net.downscale == downscale
        assert [n for n, _ in net.named_parameters()] == [n for n, _ in PoseNet(4).named_parameters()]
    assert [s for *_, s in conv_specs(4)].count(2) == 2 and conv_specs(4)[5] == (32, 64, 3, 1)
    with pytest.raises(ConfigError, match="downscale must be one of"):
        PoseNet(downscale=16)
    assert vae_downscale({"block_out_channels": [1, 2, 3, 4]}) == 8
    assert vae_downscale(type("Config", (), {"block_out_channels": (1, 2, 3)})()) == 4


def test_pose_net_rejects_wrong_rank():
    with pytest.raises(ConfigError, match="pose images"):
        PoseNet()(torch.zeros(3, 64, 64))


# ------------------------------------------------------------------------------------------------ UNet
@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    stock = UNetSpatioTemporalConditionModel(**tiny_unet_config()).eval()
    posed = PoseConditionedUNet.from_config(stock.config).eval()
    posed.load_state_dict(stock.state_dict())
    return stock, posed


def unet_inputs(batch=2, frames=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 8, size, size, generator=g)
    emb = torch.randn(batch, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)
    pose = torch.randn(batch * frames, 32, size, size, generator=g)
    return sample, torch.tensor(1.5), emb, ids, pose


def test_unet_state_dict_names_are_the_stock_ones(unets):
    stock, posed = unets
    assert list(posed.state_dict()) == list(stock.state_dict())
    assert all(posed.state_dict()[k].shape == v.shape for k, v in stock.state_dict().items())


@torch.no_grad()
def test_unet_without_pose_equals_stock_bit_for_bit(unets):
    stock, posed = unets
    sample, t, emb, ids, _ = unet_inputs()
    expected = stock(sample, t, emb, ids).sample
    assert torch.equal(posed(sample, t, emb, ids).sample, expected)
    assert torch.equal(posed(sample, t, emb, ids, pose_latents=None, return_dict=False)[0], expected)


class AddAfter(nn.Module):
    """Stock conv_in followed by a fixed addition: the injection written out by hand."""

    def __init__(self, conv, addend):
        super().__init__()
        self.conv, self.addend = conv, addend

    def forward(self, x):
        return self.conv(x) + self.addend


@torch.no_grad()
def test_pose_latents_are_added_to_conv_in_output_only(unets):
    stock, posed = unets
    sample, t, emb, ids, pose = unet_inputs()
    with_pose = posed(sample, t, emb, ids, pose_latents=pose, return_dict=False)[0]
    assert not torch.allclose(with_pose, stock(sample, t, emb, ids).sample)

    manual = copy.deepcopy(stock)
    manual.conv_in = AddAfter(manual.conv_in, pose)
    assert torch.equal(with_pose, manual(sample, t, emb, ids).sample)
    # (B, F, C0, h, w) is accepted and means the same as the flattened (B*F, C0, h, w).
    assert torch.equal(posed(sample, t, emb, ids, pose_latents=pose.reshape(2, 3, 32, 8, 8)).sample, with_pose)


@torch.no_grad()
def test_pose_latents_shape_is_checked(unets):
    _, posed = unets
    sample, t, emb, ids, pose = unet_inputs()
    with pytest.raises(ConfigError, match=r"pose_latents has shape \(5, 32, 8, 8\).*\(6, 32, 8, 8\)"):
        posed(sample, t, emb, ids, pose_latents=pose[:5])
    with pytest.raises(ConfigError, match="block_out_channels"):
        posed(sample, t, emb, ids, pose_latents=pose[:, :16])


@torch.no_grad()
def test_failed_call_leaves_no_pose_behind(unets):
    stock, posed = unets
    sample, t, emb, ids, pose = unet_inputs()
    with pytest.raises(RuntimeError):
        posed(sample, t, emb[..., :7], ids, pose_latents=pose)  # wrong embedding width fails after set-up
    assert torch.equal(posed(sample, t, emb, ids).sample, stock(sample, t, emb, ids).sample)


@torch.no_grad()
def test_reentrant_call_sees_only_its_own_pose(unets):
    stock, posed = unets
    sample, t, emb, ids, pose = unet_inputs()
    inner_sample, _, inner_emb, inner_ids, inner_pose = unet_inputs(batch=1, frames=2, seed=1)
    outer_expected = posed(sample, t, emb, ids, pose_latents=pose).sample
    inner_expected = posed(inner_sample, t, inner_emb, inner_ids, pose_latents=inner_pose).sample
    inner_results = []
    calls = []

    def nested_call(module, args):
        # Runs inside the outer forward, before the outer conv_in: the worst case for shared state.
        if not calls:
            calls.append(1)
            inner_results.append(posed(inner_sample, t, inner_emb, inner_ids, pose_latents=inner_pose).sample)

    handle = posed.time_embedding.register_forward_pre_hook(nested_call)
    try:
        outer = posed(sample, t, emb, ids, pose_latents=pose).sample
    finally:
        handle.remove()
    assert torch.equal(inner_results[0], inner_expected)
    assert torch.equal(outer, outer_expected)


@torch.no_grad()
def test_unet_deepcopy_and_save_load_keep_pose_injection(unets, tmp_path):
    stock, posed = unets
    sample, t, emb, ids, pose = unet_inputs()
    expected = posed(sample, t, emb, ids, pose_latents=pose).sample
    twin = copy.deepcopy(posed)  # e.g. an EMA copy
    assert torch.equal(twin(sample, t, emb, ids, pose_latents=pose).sample, expected)
    assert len(twin.conv_in._forward_hooks) == 1

    stock.save_pretrained(tmp_path / "unet")  # an SVD unet folder
    loaded = PoseConditionedUNet.from_pretrained(tmp_path / "unet").eval()
    assert torch.equal(loaded(sample, t, emb, ids, pose_latents=pose).sample, expected)


# ------------------------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=0)


def module_states(components):
    return {name: m.state_dict() for name, m in components.items() if isinstance(m, nn.Module)}


def test_tiny_components_are_deterministic_and_leave_global_rng_alone(tiny):
    rng = torch.get_rng_state()
    again = tiny_components(seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    first, second = module_states(tiny), module_states(again)
    assert set(first) == {"vae", "image_encoder", "unet", "pose_net"}
    for name in first:
        assert list(first[name]) == list(second[name])
        assert all(torch.equal(first[name][k], second[name][k]) for k in first[name]), name
    other = module_states(tiny_components(seed=1))
    assert not torch.equal(other["unet"]["conv_in.weight"], first["unet"]["conv_in.weight"])


def test_tiny_components_have_svd_structure(tiny):
    unet, vae, clip = tiny["unet"], tiny["vae"], tiny["image_encoder"]
    assert isinstance(unet, PoseConditionedUNet)
    assert (unet.config.in_channels, unet.config.out_channels) == (8, 4)
    assert unet.config.cross_attention_dim == clip.config.projection_dim
    assert unet.add_embedding.linear_1.in_features == 3 * unet.config.addition_time_embed_dim
    assert tiny["pose_net"].noise_latent_channels == unet.config.block_out_channels[0]
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert vae.config.scaling_factor == 0.18215
    assert clip.config.image_size == 224
    assert list(tiny["feature_extractor"].image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert list(tiny["feature_extractor"].image_std) == [0.26862954, 0.26130258, 0.27577711]
    n_params = sum(p.numel() for m in module_states(tiny).values() for p in m.values())
    assert n_params < 2_500_000
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
        assert latent.shape == (1, 4, 8, 8)
        frames = vae.decode(torch.zeros(3, 4, 8, 8), num_frames=3).sample
        assert frames.shape == (3, 3, 64, 64)
        emb = clip(torch.zeros(1, 3, 224, 224)).image_embeds
        assert emb.shape == (1, unet.config.cross_attention_dim)


def test_tiny_scheduler_is_svd_xt():
    scheduler = tiny_components()["scheduler"]
    for key, value in SVD_XT_SCHEDULER_CONFIG.items():
        assert scheduler.config[key] == value, key
    scheduler.set_timesteps(25)
    # Karras sigmas from 700 down to 0.002, then the final 0; continuous timesteps t = ln(sigma) / 4.
    assert scheduler.sigmas[0].item() == pytest.approx(700.0)
    assert scheduler.sigmas[-2].item() == pytest.approx(0.002)
    assert scheduler.sigmas[-1].item() == 0.0
    assert scheduler.timesteps[0].item() == pytest.approx(math.log(700.0) / 4, rel=1e-5)

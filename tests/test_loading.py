"""Loading MimicMotion from an SVD base folder and a checkpoint; checkpoint export and saving (SPEC section 5)."""
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mimicmotion.errors import ModelFileError
from mimicmotion.loading import (
    LoadReport,
    export_checkpoint,
    load_pipeline,
    read_checkpoint,
    save_checkpoint,
)
from mimicmotion.models import PoseConditionedUNet
from mimicmotion.tiny import save_tiny_model, tiny_components

LOGGER = "mimicmotion.loading"


@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Base folder (with its own, different UNet weights, like SVD's) and a safetensors checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, base_unet_weights=True)


@pytest.fixture(scope="module")
def checkpoint_state(saved):
    return load_file(str(saved[1]))


def assert_same_weights(module, reference, cast=None):
    got, want = module.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        value = value if cast is None else value.to(cast).to(got[key].dtype)
        assert torch.equal(got[key], value), key


def write_checkpoint(path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_gives_identical_weights(saved, tiny):
    base, checkpoint = saved
    pipe = load_pipeline(base, checkpoint)
    assert isinstance(pipe.unet, PoseConditionedUNet)
    for name in ("unet", "pose_net", "vae", "image_encoder"):
        assert_same_weights(getattr(pipe, name), tiny[name])
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(pipe.scheduler.config) == public(tiny["scheduler"].config)
    assert list(pipe.feature_extractor.image_mean) == list(tiny["feature_extractor"].image_mean)
    assert list(pipe.feature_extractor.image_std) == list(tiny["feature_extractor"].image_std)
    assert pipe.load_report == LoadReport(checkpoint=str(checkpoint))
    assert not pipe.unet.training and not pipe.pose_net.training


def test_unet_weights_come_from_the_checkpoint_not_the_base(saved, tiny):
    base, _ = saved
    base_unet = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(base_unet["conv_in.weight"], tiny["unet"].state_dict()["conv_in.weight"])


def test_loaded_pipeline_renders_like_the_components(saved, tiny):
    from mimicmotion.pipeline import MimicMotionPipeline

    base, checkpoint = saved
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (5, 3, 64, 64)).astype(np.float32))
    outputs = []
    for pipe in (load_pipeline(base, checkpoint), MimicMotionPipeline(**tiny)):
        pipe.set_progress_bar_config(disable=True)
        outputs.append(pipe(image, poses, height=64, width=64, tile_size=4, tile_overlap=1, num_inference_steps=2,
                            generator=torch.Generator().manual_seed(42), output_type="latent").frames)
    assert outputs[0].shape == (1, 5, 4, 8, 8)
    # Not bit-exact: transformers maps the CLIP weights from the file at unaligned addresses, and CPU matmul
    # kernels sum in another order there (the CLIP embedding differs by ~1e-7; the weights are identical).
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


def test_pth_and_safetensors_checkpoints_load_the_same(tmp_path, saved, tiny):
    base, checkpoint = save_tiny_model(tmp_path, seed=0, checkpoint_format="pth")
    assert checkpoint.suffix == ".pth"
    pipe = load_pipeline(base, checkpoint)
    assert_same_weights(pipe.unet, tiny["unet"])
    assert_same_weights(pipe.pose_net, tiny["pose_net"])
    # The format is read from the content: a safetensors file named .pth loads too.
    renamed = shutil.copy(saved[1], tmp_path / "named-like-the-release.pth")
    assert_same_weights(load_pipeline(base, renamed).unet, tiny["unet"])


def test_fp16_checkpoint_and_fp16_only_base(tmp_path, tiny):
    base, checkpoint = save_tiny_model(tmp_path, seed=0, checkpoint_format="pth", checkpoint_dtype=torch.float16,
                                       weights_variant="fp16")
    assert (base / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (base / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert (base / "image_encoder" / "model.fp16.safetensors").is_file()
    assert read_checkpoint(checkpoint)["unet.conv_in.weight"].dtype == torch.float16
    pipe = load_pipeline(base, checkpoint)  # float32 pipeline from fp16 files
    assert pipe.unet.conv_in.weight.dtype == torch.float32
    for name in ("unet", "pose_net", "vae", "image_encoder"):
        assert_same_weights(getattr(pipe, name), tiny[name], cast=torch.float16)
    half = load_pipeline(base, checkpoint, dtype=torch.float16)
    for name in ("unet", "pose_net", "vae", "image_encoder"):
        assert all(p.dtype == torch.float16 for p in getattr(half, name).parameters()), name


def test_nested_and_ddp_wrapped_checkpoints(tmp_path, saved, checkpoint_state, tiny):
    base, _ = saved
    wrapped = {
        "lightning.ckpt": {"epoch": 3, "state_dict": dict(checkpoint_state)},
        "deepspeed.pt": {"module": dict(checkpoint_state), "global_steps": 10},
        "ddp.pth": {f"module.{k}": v for k, v in checkpoint_state.items()},
    }
    for name, obj in wrapped.items():
        torch.save(obj, tmp_path / name)
        assert_same_weights(load_pipeline(base, tmp_path / name).unet, tiny["unet"])


# ------------------------------------------------------------------------------------------------ key checks
def test_missing_unet_keys_are_refused_and_listed(tmp_path, saved, checkpoint_state):
    base, _ = saved
    state = dict(checkpoint_state)
    del state["unet.conv_in.weight"], state["unet.mid_block.resnets.0.spatial_res_block.conv1.bias"]
    path = write_checkpoint(tmp_path / "partial.safetensors", state)
    with pytest.raises(ModelFileError, match=r"lacks 2 of \d+ unet weights") as info:
        load_pipeline(base, path)
    assert "unet.conv_in.weight" in str(info.value)
    assert "unet.mid_block.resnets.0.spatial_res_block.conv1.bias" in str(info.value)
    assert "strict=False" in str(info.value)


def test_missing_keys_with_strict_false_are_reported(tmp_path, saved, checkpoint_state, tiny, caplog):
    base, _ = saved
    state = dict(checkpoint_state)
    del state["unet.conv_in.weight"]
    path = write_checkpoint(tmp_path / "partial.safetensors", state)
    torch.manual_seed(12345)  # the fresh init must not replay the tiny model's seed (left by an earlier test)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe = load_pipeline(base, path, strict=False)
    assert pipe.load_report.missing_keys == ("unet.conv_in.weight",)
    assert not pipe.load_report.complete
    assert any("RANDOMLY INITIALISED" in r.message and "unet.conv_in.weight" in r.message for r in caplog.records)
    # Everything the checkpoint has is loaded; the missing tensor keeps its fresh initialisation.
    assert torch.equal(pipe.unet.conv_out.weight, tiny["unet"].conv_out.weight)
    assert not torch.equal(pipe.unet.conv_in.weight, tiny["unet"].conv_in.weight)


def test_checkpoint_without_pose_net_is_refused(tmp_path, saved, checkpoint_state):
    base, _ = saved
    state = {k: v for k, v in checkpoint_state.items() if not k.startswith("pose_net.")}
    path = write_checkpoint(tmp_path / "unet-only.safetensors", state)
    with pytest.raises(ModelFileError, match=r"lacks 19 of 19 pose_net weights \(it has no 'pose_net.' keys"):
        load_pipeline(base, path)


def test_unexpected_keys_are_reported_not_fatal(tmp_path, saved, checkpoint_state, caplog):
    base, _ = saved
    state = dict(checkpoint_state, **{"unet.extra.weight": torch.ones(2), "optimizer_step": torch.tensor(7),
                                      "vae.no_such.weight": torch.ones(1)})
    path = write_checkpoint(tmp_path / "extra.safetensors", state)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe = load_pipeline(base, path)
    assert pipe.load_report.unexpected_keys == ("optimizer_step", "unet.extra.weight", "vae.no_such.weight")
    assert pipe.load_report.missing_keys == ()
    assert any("3 keys no component uses" in r.message for r in caplog.records)


def test_vae_and_image_encoder_keys_override_the_base(tmp_path, saved, checkpoint_state, tiny):
    base, _ = saved
    new_conv = torch.full_like(tiny["vae"].state_dict()["encoder.conv_in.weight"], 0.125)
    new_proj = torch.full_like(tiny["image_encoder"].state_dict()["visual_projection.weight"], -0.5)
    state = dict(checkpoint_state, **{"vae.encoder.conv_in.weight": new_conv,
                                      "image_encoder.visual_projection.weight": new_proj})
    pipe = load_pipeline(base, write_checkpoint(tmp_path / "full.safetensors", state))
    assert torch.equal(pipe.vae.encoder.conv_in.weight, new_conv)
    assert torch.equal(pipe.image_encoder.visual_projection.weight, new_proj)
    assert torch.equal(pipe.vae.decoder.conv_out.weight, tiny["vae"].decoder.conv_out.weight)  # rest from base
    assert pipe.load_report.overridden == {"vae": 1, "image_encoder": 1}


def test_shape_mismatch_is_refused(tmp_path, saved, checkpoint_state):
    base, _ = saved
    state = dict(checkpoint_state, **{"unet.conv_in.weight": torch.zeros(32, 4, 3, 3)})
    path = write_checkpoint(tmp_path / "other-base.safetensors", state)
    with pytest.raises(ModelFileError, match=r"unet.conv_in.weight \(32, 4, 3, 3\) vs \(32, 8, 3, 3\)"):
        load_pipeline(base, path)


# ------------------------------------------------------------------------------------------------ unsafe files
class Payload:
    """An arbitrary Python object: unpickling it would import this module and build the instance."""

    def __init__(self):
        self.note = "not a tensor"


class OpensFile:
    """Unpickling this calls open(path, "w"): if code ran, the file exists afterwards."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused_and_never_run(tmp_path, saved, checkpoint_state):
    base, _ = saved
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save(dict(checkpoint_state, **{"pose_net.extra": OpensFile(marker)}), path)
    with pytest.raises(ModelFileError, match=r"contains pickled Python code or objects \((builtins|io)\.open\)"):
        load_pipeline(base, path)
    with pytest.raises(ModelFileError, match="NOT loaded"):
        export_checkpoint(path, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_pickle_with_class_instance_is_refused(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"unet.conv_in.weight": torch.zeros(1), "meta": Payload()}, path)
    with pytest.raises(ModelFileError, match=r"test_loading\.Payload"):
        read_checkpoint(path)


# ------------------------------------------------------------------------------------------------ bad paths
def test_missing_and_unreadable_checkpoints(tmp_path, saved):
    base, checkpoint = saved
    with pytest.raises(ModelFileError, match="not found"):
        load_pipeline(base, tmp_path / "nope.pth")
    with pytest.raises(ModelFileError, match="is not a file"):
        load_pipeline(base, tmp_path)
    cases = {
        "garbage.pth": b"this is not a checkpoint at all",
        "empty.pth": b"",
        "broken-zip.pth": b"PK\x03\x04" + b"\x00" * 64,
        "truncated.safetensors": checkpoint.read_bytes()[:1000],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError, match=r"unreadable|could not be read|not a readable"):
            load_pipeline(base, tmp_path / name)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelFileError, match="not a state dict"):
        read_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 1}, tmp_path / "no-tensors.pth")
    with pytest.raises(ModelFileError, match="no tensors"):
        read_checkpoint(tmp_path / "no-tensors.pth")


def test_base_folder_problems_are_named(tmp_path, saved):
    base, checkpoint = saved
    with pytest.raises(ModelFileError, match="base model folder .*missing-base not found"):
        load_pipeline(tmp_path / "missing-base", checkpoint)
    for sub in ("scheduler", "image_encoder"):
        broken = tmp_path / f"no-{sub}"
        shutil.copytree(base, broken)
        shutil.rmtree(broken / sub)
        with pytest.raises(ModelFileError, match=f"has no {sub}/ subfolder"):
            load_pipeline(broken, checkpoint)
    empty_vae = tmp_path / "empty-vae"
    shutil.copytree(base, empty_vae)
    (empty_vae / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="vae holds no weight files"):
        load_pipeline(empty_vae, checkpoint)


# ------------------------------------------------------------------------------------------------ writing
def test_export_checkpoint_round_trip(tmp_path, saved, tiny):
    base, _ = saved
    _, pth = save_tiny_model(tmp_path / "release-like", checkpoint_format="pth", checkpoint_dtype=torch.float16)
    original = read_checkpoint(pth)
    out = export_checkpoint(pth, tmp_path / "exported" / "mimicmotion.safetensors")
    exported = load_file(str(out))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == torch.float16
        assert torch.equal(exported[key], value), key
    assert sorted(p.name for p in out.parent.iterdir()) == ["mimicmotion.safetensors"]  # no temporary left
    assert_same_weights(load_pipeline(base, out).unet, tiny["unet"], cast=torch.float16)
    # Exporting over an existing file replaces it.
    assert export_checkpoint(pth, out) == out
    assert sorted(load_file(str(out))) == sorted(original)


def test_save_checkpoint_writes_unet_and_pose_net(tmp_path, saved, tiny):
    base, _ = saved
    pipe = load_pipeline(*saved)
    out = save_checkpoint(pipe, tmp_path / "trained.safetensors")
    state = load_file(str(out))
    expected = [f"{name}.{k}" for name in ("unet", "pose_net") for k in tiny[name].state_dict()]
    assert sorted(state) == sorted(expected)
    again = load_pipeline(base, save_checkpoint({"unet": tiny["unet"], "pose_net": tiny["pose_net"]},
                                                tmp_path / "from-modules.safetensors"))
    assert_same_weights(again.unet, tiny["unet"])
    assert_same_weights(again.pose_net, tiny["pose_net"])
    with pytest.raises(TypeError, match="pose_net"):
        save_checkpoint({"unet": tiny["unet"]}, tmp_path / "incomplete.safetensors")

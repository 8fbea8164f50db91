"""Backbones by name: wcl's ResNets, ``torchvision:<name>`` and ``timm:<name>``.

:func:`build_backbone` returns a trunk (image B×3×H×W → pooled features B×``out_dim``) carrying what the rest of
wcl needs to know about it, read from the model rather than from a table:

- ``out_dim``: the feature dimension;
- ``convolutional``: False when the trunk has an attention layer (ViT, Swin, MaxViT): no channels-last there;
- ``no_decay_names``: parameter names that get no weight decay / LARS adaptation beyond the 1-D tensors (norms,
  biases): a ViT's tokens and position embeddings (timm's ``no_weight_decay()``);
- ``backbone_info``: a :class:`BackboneInfo` with the name, the constructor arguments used and where the classifier
  was removed, which ``wcl.export`` turns into the line that loads the exported weights.

The ResNets' module names follow torchvision's ``ResNet`` (``conv1, bn1, layer1..4``), so a backbone built with
the standard stem and width 64 is a torchvision ResNet without its classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from wcl.errors import ConfigError

ResNetName = Literal["resnet18", "resnet34", "resnet50"]
TORCHVISION, TIMM = "torchvision:", "timm:"
DEFAULT_WIDTH = 64

_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
# torchvision has no no_weight_decay(): the names of its token / position parameters (ViT, Swin, MaxViT).
_TORCHVISION_TOKENS = ("class_token", "pos_embedding", "relative_position_bias_table")


@dataclass(frozen=True)
class BackboneInfo:
    """How a trunk was built: ``kind`` (``resnet``, ``torchvision``, ``timm``), ``model`` (the name within its
    library), ``args`` (the constructor keyword arguments used), ``classifier`` (module path of the classifier that
    was replaced by the identity, or where ``timm.create_model(num_classes=C)`` puts it; None for wcl's ResNets,
    whose ``fc`` is the identity)."""

    kind: Literal["resnet", "torchvision", "timm"]
    model: str
    args: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None


class ResNetBackbone(ResNet):
    """torchvision ResNet trunk: image B×3×H×W → pooled features B×``out_dim`` (``fc`` is the identity)."""

    def __init__(self, name: ResNetName = "resnet18", width: int = DEFAULT_WIDTH, cifar_stem: bool = False,
                 zero_init_residual: bool = True) -> None:
        if name not in _SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_SPECS)}")
        if width < 1:
            raise ValueError(f"backbone width must be >= 1, got {width}")
        block, layers = _SPECS[name]
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        # Rebuild the trunk at the requested base width (torchvision hard-codes 64).
        self.inplanes = width
        self.dilation = 1
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Identity()
        self.out_dim = width * 8 * block.expansion
        self.convolutional = True
        self.no_decay_names: frozenset[str] = frozenset()
        self.name, self.width, self.cifar_stem = name, width, cifar_stem
        args = {} if zero_init_residual else {"zero_init_residual": False}
        self.backbone_info = BackboneInfo("resnet", name, args)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def build_resnet(name: ResNetName = "resnet18", width: int = DEFAULT_WIDTH, cifar_stem: bool = False,
                 zero_init_residual: bool = True) -> ResNetBackbone:
    """A ResNet-18/34/50 trunk; ``width`` 64 is the standard network, 16 a small one for CPU runs."""
    return ResNetBackbone(name, width, cifar_stem, zero_init_residual)


def build_backbone(name: str, width: int = DEFAULT_WIDTH, cifar_stem: bool = False,
                   backbone_args: dict[str, Any] | None = None) -> nn.Module:
    """The trunk named ``name``: ``resnet18|resnet34|resnet50`` (wcl's, with ``width`` and ``cifar_stem``),
    ``torchvision:<name>`` (a classification model of ``torchvision.models.list_models()``, its last linear layer
    replaced by the identity) or ``timm:<name>`` (``timm.create_model(name, num_classes=0, **backbone_args)``).

    Raises:
        ConfigError: an unknown name, ResNet-only keys given to another backbone, constructor arguments the model
            does not take, or ``timm:`` without timm installed.
    """
    args = dict(backbone_args or {})
    if name in _SPECS:
        try:
            return build_resnet(name, width, cifar_stem, **args)
        except TypeError as err:
            raise ConfigError(f"model.backbone_args {args} do not fit wcl's {name} (it takes only "
                              f"zero_init_residual; width and cifar_stem are keys of their own): {err}") from err
    if not name.startswith((TORCHVISION, TIMM)):
        raise ConfigError(f"unknown model.backbone {name!r}; choose resnet18, resnet34, resnet50, "
                          "torchvision:<name> (e.g. torchvision:convnext_tiny) or timm:<name> "
                          "(e.g. timm:vit_small_patch16_224).")
    if width != DEFAULT_WIDTH or cifar_stem:
        raise ConfigError(f"model.width ({width}) and model.cifar_stem ({cifar_stem}) apply to wcl's ResNets only; "
                          f"for {name} set --model.width {DEFAULT_WIDTH} --model.cifar_stem false and give the "
                          "model's own constructor arguments in model.backbone_args.")
    if name.startswith(TORCHVISION):
        trunk, info = _torchvision(name[len(TORCHVISION):], args)
        tokens = [n for n, p in trunk.named_parameters() if p.ndim > 1 and n.split(".")[-1] in _TORCHVISION_TOKENS]
    else:
        trunk, info = _timm(name[len(TIMM):], args)
        tokens = _timm_no_decay(trunk)
    trunk.backbone_info = info
    trunk.no_decay_names = frozenset(tokens)
    trunk.convolutional = not any(isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__
                                  for m in trunk.modules())
    return trunk


def _torchvision(model: str, args: dict[str, Any]) -> tuple[nn.Module, BackboneInfo]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if model not in names:
        raise ConfigError(f"unknown model.backbone torchvision:{model}: not a classification model of "
                          "torchvision.models.list_models() (e.g. resnet18, convnext_tiny, efficientnet_b0, vit_b_16).")
    try:
        net = torchvision.models.get_model(model, **args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.backbone_args {args} do not fit torchvision.models.get_model({model!r}): "
                          f"{err}") from err
    if getattr(net, "aux_logits", False):
        raise ConfigError(f"torchvision:{model} returns auxiliary logits while training; set "
                          "model.backbone_args: {aux_logits: false}.")
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"torchvision:{model} has no linear classifier to replace; use another model.")
    path, head = linears[-1]  # the classifier is the last linear layer, after any norm / pooling / pre-logits
    _set_submodule(net, path, nn.Identity())
    net.out_dim = head.in_features
    return net, BackboneInfo("torchvision", model, args, path)


def _timm(model: str, args: dict[str, Any]) -> tuple[nn.Module, BackboneInfo]:
    try:
        import timm
    except ImportError as err:
        raise ConfigError(f"model.backbone timm:{model} needs timm, which is not installed: "
                          'pip install "wcl[timm]"') from err
    if not timm.is_model(model):
        raise ConfigError(f"unknown model.backbone timm:{model}: not in timm.list_models() (timm {timm.__version__}; "
                          "e.g. vit_small_patch16_224, convnext_atto, efficientnet_b0).")
    if "num_classes" in args:
        raise ConfigError("model.backbone_args sets num_classes, but a backbone has no classifier (num_classes=0); "
                          "remove it.")
    # ViTs resample their position embedding to the input's grid, so low-resolution multi-crop crops work; models
    # without the option (convolutional ones) reject the keyword and need nothing.
    tried = args if "dynamic_img_size" in args else {"dynamic_img_size": True, **args}
    try:
        try:
            net = timm.create_model(model, num_classes=0, **tried)
        except TypeError as err:
            if tried is args or "dynamic_img_size" not in str(err):
                raise
            tried = args
            net = timm.create_model(model, num_classes=0, **tried)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"model.backbone_args {args} do not fit timm.create_model({model!r}): {err}") from err
    net.out_dim = getattr(net, "head_hidden_size", None) or net.num_features
    classifier = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
    return net, BackboneInfo("timm", model, dict(tried), classifier if isinstance(classifier, str) else None)


def _timm_no_decay(net: nn.Module) -> list[str]:
    """Parameters timm declares decay-free: ``no_weight_decay()`` names and ``no_weight_decay_keywords()``."""
    exact = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    keywords = set(net.no_weight_decay_keywords()) if hasattr(net, "no_weight_decay_keywords") else set()
    return [n for n, _ in net.named_parameters() if n in exact or any(k in n for k in keywords)]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    if leaf.isdigit():
        owner[int(leaf)] = module
    else:
        setattr(owner, leaf, module)


def module_expression(path: str) -> str:
    """Python attribute access of a module path: ``classifier.2`` → ``.classifier[2]``."""
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))

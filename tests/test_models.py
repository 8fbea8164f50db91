import pytest
import torch
import torchvision

from wcl.models import ProjectionHead, build_resnet


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_standard_backbone_is_torchvision_without_fc(name):
    tv = getattr(torchvision.models, name)()
    ours = build_resnet(name, width=64, cifar_stem=False)
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    tv.fc = torch.nn.Identity()
    tv.eval(), ours.eval()
    x = torch.randn(2, 3, 32, 32)  # the smallest input the standard stem takes to a 1×1 map
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


def test_cifar_stem_and_width():
    net = build_resnet("resnet18", width=16, cifar_stem=True)
    assert net.out_dim == 128
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 128)
    assert build_resnet("resnet50", width=16).out_dim == 16 * 8 * 4


def test_bad_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_resnet("vgg16")


def test_projection_head_shapes():
    head = ProjectionHead(128, 64, 32, num_layers=3)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, 32]
    assert head(torch.randn(5, 128)).shape == (5, 32)


# ---------------------------------------------------------------- backbones by name (torchvision:, timm:)
TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 16, "num_heads": 2}


@pytest.mark.parametrize("name,args,dim,conv,tokens", [
    ("torchvision:shufflenet_v2_x0_5", {}, 1024, True, set()),
    ("torchvision:vit_b_16", {"image_size": 32}, 768, False, {"class_token", "encoder.pos_embedding"}),
    ("timm:vit_tiny_patch16_224", TINY_VIT, 16, False, {"cls_token", "pos_embed"}),
    ("timm:convnext_atto", {}, 320, True, set()),
])
def test_backbone_by_name_reads_its_feature_dim_from_the_model(name, args, dim, conv, tokens):
    from wcl.models import build_backbone

    net = build_backbone(name, backbone_args=args)
    assert net.out_dim == dim and net.convolutional == conv
    assert net.no_decay_names == tokens  # timm's no_weight_decay(); torchvision's token parameters
    size = args.get("img_size") or args.get("image_size") or 32
    assert net(torch.randn(2, 3, size, size)).shape == (2, dim)
    assert net.backbone_info.kind == name.split(":")[0]


def test_torchvision_backbone_is_get_model_without_its_classifier():
    from wcl.models import build_backbone

    net = build_backbone("torchvision:mobilenet_v3_small").eval()
    tv = torchvision.models.get_model("mobilenet_v3_small").eval()
    assert net.backbone_info.classifier == "classifier.3"  # the last linear layer; the pre-logits layer stays
    tv.classifier[3] = torch.nn.Identity()
    tv.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), tv(x))


def test_vit_declares_its_tokens_and_norms_decay_free():
    from wcl.models import build_backbone
    from wcl.optim import param_groups

    vit = build_backbone("timm:vit_tiny_patch16_224", backbone_args=TINY_VIT)
    decay, no_decay = param_groups({"backbone": vit, "g": ProjectionHead(16, 8, 4)}, 0.1)
    names = {id(p): n for n, p in vit.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"] if id(p) in names}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias", "patch_embed.proj.bias"} <= excluded
    assert all(n.endswith((".bias", "_token", "pos_embed")) or "norm" in n for n in excluded), excluded
    kept = {names[id(p)] for p in decay["params"] if id(p) in names}
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"} <= kept
    assert len(kept) + len(excluded) == len(names)
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] and not decay["lars_exclude"]


def test_vit_low_resolution_crops_need_the_dynamic_image_size_wcl_sets():
    from wcl.models import build_backbone

    vit = build_backbone("timm:vit_tiny_patch16_224", backbone_args=TINY_VIT)
    assert vit.backbone_info.args["dynamic_img_size"] is True
    assert vit(torch.randn(3, 3, 8, 8)).shape == (3, 16)  # a 2×2 grid of 4-px patches
    fixed = build_backbone("timm:vit_tiny_patch16_224", backbone_args={**TINY_VIT, "dynamic_img_size": False})
    with pytest.raises(AssertionError):
        fixed(torch.randn(3, 3, 8, 8))


@pytest.mark.parametrize("name,kw,needle", [
    ("vgg16", {}, "unknown model.backbone 'vgg16'"),
    ("torchvision:fasterrcnn_resnet50_fpn", {}, "not a classification model"),
    ("timm:no_such_net", {}, "not in timm.list_models()"),
    ("timm:vit_tiny_patch16_224", {"width": 16}, "apply to wcl's ResNets only"),
    ("torchvision:resnet18", {"cifar_stem": True}, "apply to wcl's ResNets only"),
    ("timm:vit_tiny_patch16_224", {"backbone_args": {"img_sise": 32}}, "img_sise"),
    ("resnet18", {"backbone_args": {"img_size": 32}}, "do not fit wcl's resnet18"),
])
def test_bad_backbone_is_one_config_error(name, kw, needle):
    from wcl.errors import ConfigError
    from wcl.models import build_backbone

    with pytest.raises(ConfigError) as err:
        build_backbone(name, **kw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_timm_backbone_without_timm_says_how_to_install(monkeypatch):
    import sys

    from wcl.errors import ConfigError
    from wcl.models import build_backbone

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match=r'timm:vit_small_patch16_224 needs timm.*pip install "wcl\[timm\]"'):
        build_backbone("timm:vit_small_patch16_224")


@pytest.mark.slow
def test_cli_start_up_does_not_import_timm():
    import subprocess
    import sys

    code = "import sys, wcl.cli, wcl.export; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"

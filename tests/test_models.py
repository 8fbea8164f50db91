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
    x = torch.randn(2, 3, 64, 64)
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

"""One line per model name of the factory, saying what the network is (shown by `repro models`).

Parameter counts are for 1000 classes at 224x224.
"""
from typing import Dict

MODEL_DESCRIPTIONS: Dict[str, str] = {
    'slak_tiny': 'SLaK-T teacher: sparse 51x51 kernels as 51x5 + 5x51 strips, depths 3-3-9-3, width 124-998, 50.7M',
    'slak_small': 'SLaK-S: sparse 51x51 strip kernels, depths 3-3-27-3, width 124-998, 91.1M',
    'slak_base': 'SLaK-B: sparse 51x51 strip kernels, depths 3-3-27-3, width 166-1331, 158M',
    'slak_large': 'SLaK-L: sparse 51x51 strip kernels, depths 3-3-27-3, width 249-1996, 347M',
    'slak_tiny_mxm': 'SLaK-T with square (not decomposed) 51x51 kernels, 60.8M',
    'slak_small_mxm': 'SLaK-S with square (not decomposed) 51x51 kernels, 117M',
    'slak_base_mxm': 'SLaK-B with square (not decomposed) 51x51 kernels, 192M',
    'slak_micro': 'CPU-sized SLaK with the real 51/49/47/13/5 strip kernels: depths 1-1-2-1, width 20-166, 0.7M',
    'l2s_convnext_tiny': "the paper's ConvNeXt-T student (L2S-T): SLaK skeleton, 7x7 depthwise conv + BatchNorm, 28.6M",
    'l2s_convnext_small': "the paper's ConvNeXt-S student: SLaK skeleton, 7x7 depthwise conv + BatchNorm, 50.2M",
    'l2s_convnext_micro': 'CPU-sized L2S student: depths 1-1-2-1, width 16-128, 7x7 depthwise conv + BatchNorm, 0.4M',
    'convnext_atto': 'timm ConvNeXt-Atto (7x7 depthwise + LayerNorm), 3.7M',
    'convnext_femto': 'timm ConvNeXt-Femto, 5.2M',
    'convnext_pico': 'timm ConvNeXt-Pico, 9.1M',
    'convnext_nano': 'timm ConvNeXt-Nano, 15.6M',
    'convnext_tiny': 'timm ConvNeXt-T: the small-kernel (7x7) ConvNet teacher, also a student, 28.6M',
    'convnext_small': 'timm ConvNeXt-S, 50.2M',
    'convnext_base': 'timm ConvNeXt-B, 88.6M',
    'resnet50': 'timm ResNet-50 student, 25.6M',
    'vit_small': "timm's current DeiT-style ViT-S/16 (384 wide, depth 12, 6 heads), 22.1M; not the authors' ViT-S "
                 '(vit_small_l2s); patch 4 below 224',
    'vit_small_l2s': "the authors' ViT-S teacher: original 2021 timm vit_small_patch16_224 (768 wide, depth 8, "
                     '8 heads, MLP 3, no qkv bias, scale 768**-0.5), 48.8M; patch 4 below 224',
    'swin_tiny': 'timm Swin-T teacher (patch 4, window 7), 28.3M; patch 2 / window 4 below 224',
    'cswin_tiny': 'CSWin-T teacher (official layout): cross-shaped stripe attention + LePE, width 64-512, depths '
                  '1-2-21-1, 22.3M; stem stride 2 / split 1-2-2-2 below 224',
}


def describe_model(name: str) -> str:
    """The one-line description of a model name (timm names outside the factory's list are passed through)."""
    return MODEL_DESCRIPTIONS.get(name, 'a timm model, built offline by timm.create_model')

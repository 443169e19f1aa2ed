"""Model zoo: SLaK teachers, the paper's ConvNeXt students, the authors' ViT-S and CSWin-T teachers and timm
models, with deploy forms and accounting.

Everything is built offline through `create_model`; the SLaK variants, `vit_small_l2s` and `cswin_tiny` are also
registered in timm's registry.
"""
from .accounting import count_flops, count_params
from .descriptions import MODEL_DESCRIPTIONS, describe_model
from .factory import adapt_state_dict, create_model, list_models, load_pretrained_file
from .features import feature_channels, logits_and_features
from .reparam import reparameterize
from .slak import SLaK, crop_kernel_to_input, large_kernel_param_names

__all__ = ['SLaK', 'create_model', 'list_models', 'reparameterize', 'count_params', 'count_flops',
           'logits_and_features', 'feature_channels', 'large_kernel_param_names', 'crop_kernel_to_input',
           'load_pretrained_file', 'adapt_state_dict', 'describe_model', 'MODEL_DESCRIPTIONS']

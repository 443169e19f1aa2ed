"""Speed of exact kernel cropping and of the deploy forms, on whatever device is at hand.

    python benchmarks/bench_models.py --model slak_tiny --img 32 --batch 16 --steps 5

Prints milliseconds per training step (forward + backward) with and without cropping, milliseconds per
inference forward for the training form, the strip deploy form and the dense M x M deploy form, and the
multiply-accumulates of each (nominal and as executed).
"""
import argparse
import copy
import time

import torch

from repro.models import count_flops, create_model, reparameterize
from repro.models.slak import LargeKernelConv2d, ReparamLargeKernelConv


def set_cropping(model: torch.nn.Module, crop: bool) -> torch.nn.Module:
    """Turn kernel cropping on or off in every large-kernel conv."""
    for m in model.modules():
        if isinstance(m, LargeKernelConv2d):
            m.crop = crop
    return model


def timed(fn, steps: int, device: torch.device) -> float:
    """Milliseconds per call of fn, after one warm-up call."""
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='slak_tiny', help='a SLaK-skeleton model (slak_*, l2s_convnext_*)')
    parser.add_argument('--img', type=int, default=32, help='input size in pixels (default 32)')
    parser.add_argument('--batch', type=int, default=16, help='images per step (default 16)')
    parser.add_argument('--steps', type=int, default=5, help='timed calls after one warm-up (default 5)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=100, img_size=args.img).to(device)
    if not any(isinstance(m, ReparamLargeKernelConv) for m in model.modules()):
        parser.error(f'{args.model} has no large-kernel convs to crop or re-parameterize; pass a slak_* or '
                     'l2s_convnext_* model')
    decomposed = any(getattr(m, 'decom', False) for m in model.modules() if isinstance(m, ReparamLargeKernelConv))
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    print(f'{args.model} img {args.img} batch {args.batch} on {device} ({torch.get_num_threads()} CPU threads)')

    def train_step(net):
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()

    for crop in (False, True):
        net = set_cropping(model, crop).train()
        ms = timed(lambda: train_step(net), args.steps, device)
        print(f'train step, cropping {"on " if crop else "off"}: {ms:8.1f} ms')
    print(f'MACs nominal {count_flops(model, args.img)["dense"] / 1e9:.3f} G, '
          f'as executed {count_flops(model, args.img, as_executed=True)["dense"] / 1e9:.3f} G')

    forms = {'training form': model.eval()}
    if decomposed:  # M x N + N x M strips, or everything merged into one M x M kernel
        forms.update({'deploy strips': reparameterize(copy.deepcopy(model).eval()),
                      'deploy dense': reparameterize(copy.deepcopy(model).eval(), dense=True)})
    else:  # one square kernel (plus BatchNorm) per block: a single deploy form
        forms['deploy'] = reparameterize(copy.deepcopy(model).eval())
    with torch.no_grad():
        for label, net in forms.items():
            ms = timed(lambda: net(x), args.steps, device)
            gmacs = count_flops(net, args.img, as_executed=True)['dense'] / 1e9
            print(f'inference, {label:13s}: {ms:8.1f} ms   {gmacs:.3f} GMACs as executed')


if __name__ == '__main__':
    main()

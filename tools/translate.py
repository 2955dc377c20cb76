"""Translate images with a generator of cyclegan.py, pixelgan.py or the official code.

The generator: a checkpoint of either script, or an official generator .pth (ResNet or U-Net,
any norm, built as its keys and shapes say).

    python tools/translate.py --ckpt out/cyclegan/ckpt.pt photos/
    python tools/translate.py --ckpt latest_net_G_A.pth --results_dir results/h2z photo.jpg

Each image under the path, at its own size (padded to what the generator needs, then cropped
back), through the generator in eval mode (--test_train_mode: in train mode, as the official
test script and the pix2pix paper run it), into an 8-bit PNG of the same relative name under
--results_dir. An existing file (an input, an earlier result) is never replaced.
"""
import argparse, collections, io, os, re, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
import cyclegan, data, pixelgan

def load_weights(net, sd, path):
    """net.load_state_dict(sd), less the running statistics that old official files carry under
    InstanceNorm layers; weights that do not fit are one line naming a few keys."""
    expected = net.state_dict()
    stale = ('running_mean', 'running_var', 'num_batches_tracked')
    sd = {k: v for k, v in sd.items() if k in expected or not k.endswith(stale)}
    found = {'missing': [k for k in expected if k not in sd],
             'unexpected': [k for k in sd if k not in expected],
             'of other shapes': [k for k in expected if k in sd
                                 and getattr(sd[k], 'shape', None) != expected[k].shape]}
    problems = [f"{what}: {', '.join(keys[:3])}" for what, keys in found.items() if keys]
    if problems:
        sys.exit(f"error: {path}: not the weights of this {type(net).__name__} "
                 f"({'; '.join(problems)})")
    net.load_state_dict(sd)
    return net

def official_norm(sd, first_conv):
    """The norm a generator was trained with: batch norm has weights of its own; else the
    convolutions have a bias only before instance norm (the official rule)."""
    if any(v.ndim == 1 and k.endswith('.weight') for k, v in sd.items()):
        return 'batch'
    return 'instance' if first_conv + '.bias' in sd else 'none'

def load_generator(path, direction=None, obj=None):
    """The generator in path and the multiple its input sides need. Our checkpoints: pixelgan's G;
    cyclegan's G_A for the direction it trained (and direction None), G_B for the other. Official
    files: built as their keys and shapes say. obj: the file's contents, if already loaded."""
    if obj is None:
        obj = cyclegan.load_file(path)
    dropout = True  # (U-Net: the official default; in eval mode it changes nothing)
    if isinstance(obj, dict) and obj.get('script') == 'pixelgan':
        dropout = not pixelgan.check_checkpoint(obj, path)['args']['no_dropout']
        obj = obj['G']
    elif isinstance(obj, dict) and 'script' in obj:
        trained = cyclegan.check_checkpoint(obj, path)['args']['direction']
        obj = obj['G_A' if direction in (None, trained) else 'G_B']
    sd = {re.sub(r'^module\.', '', k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if 'model.model.0.weight' in sd:  # a U-Net: its depth is how deep its blocks nest
        num_downs = max(k.split('.').count('model') for k in sd) - 1
        first = sd['model.model.0.weight']
        out_nc = getattr(sd.get('model.model.3.weight'), 'shape', [0, 3])[1]  # ConvTranspose
        norm = official_norm(sd, 'model.model.0')
        G = pixelgan.UnetGenerator(first.shape[1], out_nc, num_downs, first.shape[0], norm, dropout)
        return load_weights(G, sd, path), 2 ** num_downs
    w = sd.get('model.1.weight')
    if w is None or w.ndim != 4 or w.shape[-1] != 7:
        kind = 'not a generator state_dict'
        if 'model.0.weight' in sd or 'net.0.weight' in sd:
            kind = 'a discriminator'
        sys.exit(f"error: {path}: {kind}; give a generator (ResNet or U-Net)")
    n_blocks = len({k.split('.')[1] for k in sd if 'conv_block' in k})
    dropout = getattr(sd.get('model.10.conv_block.6.weight'), 'ndim', 0) == 4  # a conv there
    out_nc = getattr(sd.get(f"model.{n_blocks + 17}.weight"), 'shape', [3])[0]  # the last conv
    norm = official_norm(sd, 'model.1')
    G = cyclegan.ResnetGenerator(w.shape[1], out_nc, w.shape[0], norm, n_blocks, dropout)
    return load_weights(G, sd, path), 4

def run_generator(G, x, multiple):
    """G on an image of any size: padded to a multiple, and to at least 8 pixels (the ResNet's
    reflection padding needs 2 after its two downsamplings), then cropped back. The padding
    reflects the image where it is large enough, else repeats its edge."""
    h, w = x.shape[-2:]
    pad_h = max(-h % multiple, max(multiple, 8) - h)
    pad_w = max(-w % multiple, max(multiple, 8) - w)
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return G(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]

def png_bytes(y):
    """y in [-1, 1], C x H x W, as an 8-bit PNG (grayscale for one channel), as the official code
    and the FID tools read images."""
    levels = (y.float().cpu() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    png = io.BytesIO()
    Image.fromarray(levels.permute(1, 2, 0).squeeze(2).numpy()).save(png, 'PNG')
    return png.getvalue()

@torch.no_grad()
def translate(path, ckpt, results_dir, direction=None, train_mode=False, device='auto'):
    """Each image under path into results_dir; returns the files written."""
    device = cyclegan.pick_device(device)
    G, multiple = load_generator(ckpt, direction)
    G.train(train_mode).to(device)
    channels = next(p for p in G.parameters() if p.ndim == 4).shape[1]  # its first conv's
    if channels not in (1, 3):
        sys.exit(f"error: {ckpt}: a generator of {channels}-channel images; images are read as 1 "
                 f"(grayscale) or 3 (RGB) channels")
    paths, base = [path], os.path.dirname(path)
    if not os.path.isfile(path):
        paths, base = data.find_images(path), path
    outs = [os.path.join(results_dir, os.path.splitext(os.path.relpath(p, base))[0] + '.png')
            for p in paths]
    taken = [out for out in outs if os.path.exists(out)]  # an input, an earlier result
    if taken:
        sys.exit(f"error: --results_dir {results_dir}: {taken[0]} would be replaced; give another "
                 f"--results_dir")
    twice = [out for out, n in collections.Counter(outs).items() if n > 1]
    if twice:
        sys.exit(f"error: {path}: two images would both be written to {twice[0]} (their names "
                 f"differ only in the extension); rename one")
    try:  # the folders first: a --results_dir that cannot be made fails before any work
        for folder in sorted({os.path.dirname(out) for out in outs}):
            os.makedirs(folder, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: --results_dir {results_dir}: cannot write there ({e.strerror})")
    for src, out in zip(paths, outs):
        x = TF.to_tensor(data.load_image(src, channels))[None].to(device) * 2 - 1
        cyclegan.save_file(png_bytes(run_generator(G, x, multiple)[0]), out)
    return outs

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('path', help='an image, or a folder of images (searched recursively)')
    p.add_argument('--ckpt', required=True, help='a checkpoint of either script, or an official '
                   'generator .pth')
    p.add_argument('--results_dir', default='results', help='where the PNGs go')
    p.add_argument('--direction', choices=['AtoB', 'BtoA'],
                   help='cyclegan: which generator (default: the direction trained, G_A)')
    p.add_argument('--test_train_mode', action='store_true',
                   help='run the generator in train mode (dropout, batch statistics)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    args = p.parse_args(argv)
    try:
        outs = translate(args.path, args.ckpt, args.results_dir, args.direction,
                         args.test_train_mode, args.device)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    print(f"translated {len(outs)} image(s) into {args.results_dir}")

if __name__ == '__main__':
    main()

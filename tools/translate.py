"""Translate images with a generator of cyclegan.py, pixelgan.py or the official code.

    python tools/translate.py --ckpt out/cyclegan/ckpt.pt photos/
    python tools/translate.py --ckpt latest_net_G_A.pth --results_dir results/h2z photo.jpg
    python tools/translate.py --ckpt G.safetensors --load_size 286 photos/   # at the trained scale

The generator: a checkpoint of either script, an official generator .pth (ResNet or U-Net, any
norm, built as its keys and shapes say), or a .safetensors file of either (pip install
safetensors). Each image under the path goes through the generator in eval mode (--test_train_mode:
in train mode, as the official test script and the pix2pix paper run it) into an 8-bit PNG of the
same relative name and size under --results_dir. --load_size N first resizes it as training did
(the shorter side to N; the width for scale_width models), and the output back to its size;
without it the generator sees the native size (padded to what it needs, cropped back). Images of
one size go through --batch_size at a time. An existing file is never replaced: a rerun (after
Ctrl-C, or a broken image removed) keeps the outputs that are newer than their inputs and writes
the rest.
"""
import argparse, collections, io, os, re, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
import cyclegan, data, pixelgan

def load_weights(net, sd, path):
    """net.load_state_dict(sd), less the running statistics that old official files carry under
    InstanceNorm layers; weights that do not fit, or are not finite, are one line."""
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
    if not cyclegan.finite([net]):
        sys.exit(f"error: {path}: its weights are NaN or infinite; it is damaged")
    return net

def official_norm(sd, first_conv):
    """The norm a generator was trained with: batch norm has weights of its own; else the
    convolutions have a bias only before instance norm (the official rule)."""
    if any(v.ndim == 1 and k.endswith('.weight') for k, v in sd.items()):
        return 'batch'
    return 'instance' if first_conv + '.bias' in sd else 'none'

def read_safetensors(path):
    """A .safetensors file's tensors and metadata (export.py writes the generator's build there)."""
    try:
        from safetensors import safe_open
    except ImportError:
        sys.exit("error: a .safetensors file needs the package: pip install safetensors")
    try:
        with safe_open(path, 'pt') as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        sys.exit(f"error: {path}: not a readable .safetensors file ({cyclegan.first_line(e)})")

def build_of(G):
    """What rebuilds the generator G, as strings: the metadata of its .safetensors file."""
    unet = isinstance(G, pixelgan.UnetGenerator)
    convs = [p for p in G.parameters() if p.ndim == 4]
    blocks = [m for m in G.modules() if isinstance(m, (pixelgan.UnetBlock, cyclegan.ResnetBlock))]
    build = dict(architecture='resnet', depth=len(blocks), in_channels=convs[0].shape[1],
                 out_channels=convs[-1].shape[0], ngf=convs[0].shape[0],
                 norm=official_norm(G.state_dict(), 'model.1'),
                 dropout=any(isinstance(m, nn.Dropout) for m in G.modules()))
    if unet:  # (the last weight is a transposed convolution's: input, output channels)
        build.update(architecture='unet', out_channels=convs[-1].shape[1],
                     norm=official_norm(G.state_dict(), 'model.model.0'))
    return {k: str(v) for k, v in build.items()}

def ours(obj):
    """The script whose checkpoint obj is, or None (an official file, or a bare state_dict)."""
    script = isinstance(obj, dict) and obj.get('script')
    return {'cyclegan': cyclegan, 'pixelgan': pixelgan}.get(script if script else None)

def load_generator(path, direction=None, obj=None):
    """The generator in path and the multiple its input sides need. Our checkpoints: pixelgan's G;
    cyclegan's G_A for the direction it trained (and direction None), G_B for the other. Official
    files and .safetensors: built as their keys and shapes say (dropout: as the metadata says).
    obj: the file's contents, if already loaded."""
    meta, dropout = {}, True  # (U-Net: the official default; in eval mode it changes nothing)
    if obj is None and path.lower().endswith('.safetensors'):
        obj, meta = read_safetensors(path)
        dropout = meta.get('dropout') == 'True'
    elif obj is None:
        obj = cyclegan.load_file(path)
    script = ours(obj)
    if script is not None:
        args = script.check_checkpoint(obj, path, script.SCRIPT)['args']
        dropout = not args.get('no_dropout', True)
    if script is pixelgan and direction not in (None, args['direction']):
        sys.exit(f"error: --direction {direction}: {path} is a pixelgan checkpoint, which "
                 f"translates {args['direction']} only; drop --direction")
    if script is not None:
        trained = args['direction']
        obj = obj['G' if script is pixelgan else 'G_A' if direction in (None, trained) else 'G_B']
    elif direction is not None:
        sys.exit(f"error: --direction {direction}: {path} holds one generator; drop --direction")
    sd = {re.sub(r'^module\.', '', k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        sys.exit(f"error: {path}: not a generator state_dict (it holds more than tensors)")
    G, multiple = build_generator(sd, path, dropout)
    if meta and {k: meta.get(k) for k in build_of(G)} != build_of(G):
        sys.exit(f"error: {path}: its metadata {meta} does not match its weights, those of "
                 f"{build_of(G)}; the file is damaged")
    return G, multiple

def build_generator(sd, path, dropout):
    """The generator a state_dict in the official layout holds, and the multiple its sides need."""
    if 'model.model.0.weight' in sd:  # a U-Net: its depth is how deep its blocks nest
        num_downs = max(k.split('.').count('model') for k in sd) - 1
        first = sd['model.model.0.weight']
        out_nc = getattr(sd.get('model.model.3.weight'), 'shape', [0, 3])[1]  # ConvTranspose
        if not 5 <= num_downs <= 12:
            sys.exit(f"error: {path}: a U-Net of {num_downs} levels; the official ones have 7 or 8")
        norm = official_norm(sd, 'model.model.0')
        G = pixelgan.UnetGenerator(first.shape[1], out_nc, num_downs, first.shape[0], norm,
                                   dropout=dropout)
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
    G = cyclegan.ResnetGenerator(w.shape[1], out_nc, w.shape[0], norm, n_blocks, dropout=dropout)
    return load_weights(G, sd, path), 4

def run_generator(G, x, multiple):
    """G on images of any size: padded to a multiple, and to at least 8 pixels (the ResNet's
    reflection padding needs 2 after its two downsamplings), then cropped back. The padding
    reflects the image where it is large enough, else repeats its edge."""
    h, w = x.shape[-2:]
    pad_h = max(-h % multiple, max(multiple, 8) - h)
    pad_w = max(-w % multiple, max(multiple, 8) - w)
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return G(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]

def png_bytes(y, size):
    """y in [-1, 1], C x H x W, as an 8-bit PNG (grayscale for one channel) of the given size,
    resized in 8 bits (a 24-megapixel output takes 72 MB, not 288)."""
    levels = (y.float().cpu() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    img = Image.fromarray(levels.permute(1, 2, 0).squeeze(2).numpy())
    if img.size != size:
        img = img.resize(size, Image.BICUBIC)
    png = io.BytesIO()
    img.save(png, 'PNG')
    return png.getvalue()

def scaled(size, load_size, by_width):
    """The size training would have resized an image of this size to: the shorter side (or the
    width, for scale_width models) to load_size, the aspect ratio kept."""
    w, h = size
    if by_width or w <= h:
        return load_size, max(1, round(h * load_size / w))
    return max(1, round(w * load_size / h)), load_size

def outputs(path, results_dir):
    """The inputs under path (regular files only) and their outputs; one line where an output
    would replace an input or a link, or two inputs would share an output."""
    if os.path.isfile(path):
        paths, base = [path], os.path.dirname(path)
    elif os.path.isdir(path):
        paths, base = data.find_images(path), path
    else:
        sys.exit(f"error: {path}: neither an image file nor a folder")
    outs = [os.path.join(results_dir, os.path.splitext(os.path.relpath(p, base))[0] + '.png')
            for p in paths]
    inputs = {os.path.realpath(p) for p in paths}
    for out in outs:
        if os.path.realpath(out) in inputs or os.path.islink(out):  # (a dangling link too)
            sys.exit(f"error: --results_dir {results_dir}: {out} would be replaced; give another "
                     f"--results_dir")
    twice = [out for out, n in collections.Counter(outs).items() if n > 1]
    if twice:
        sys.exit(f"error: {path}: two images would both be written to {twice[0]} (their names "
                 f"differ only in the extension); rename one")
    return paths, outs

@torch.no_grad()
def translate(path, ckpt, results_dir, direction=None, train_mode=False, device='auto',
              load_size=None, batch_size=None, dtype='auto'):
    """Each image under path into results_dir; returns the outputs written and those kept."""
    device = cyclegan.pick_device(device)
    obj = cyclegan.load_file(ckpt) if not ckpt.lower().endswith('.safetensors') else None
    G, multiple = load_generator(ckpt, direction, obj)
    G.train(train_mode).to(device)
    channels = next(p for p in G.parameters() if p.ndim == 4).shape[1]  # its first conv's
    if channels not in (1, 3):
        sys.exit(f"error: {ckpt}: a generator of {channels}-channel images; images are read as 1 "
                 f"(grayscale) or 3 (RGB) channels")
    by_width = ours(obj) is not None and obj['args']['preprocess'].startswith('scale_width')
    if ours(obj) is not None and load_size is None:
        print(f"note: {ckpt} was trained on images resized to {obj['args']['load_size']} "
              f"(--preprocess {obj['args']['preprocess']}); --load_size "
              f"{obj['args']['load_size']} translates at that scale", file=sys.stderr)
    paths, outs = outputs(path, results_dir)
    kept = [out for src, out in zip(paths, outs)
            if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src)]
    stale = [out for out in outs if os.path.exists(out) and out not in kept]
    if stale:
        sys.exit(f"error: --results_dir {results_dir}: {stale[0]} is older than its input; remove "
                 f"it or give another --results_dir")
    try:  # the folders first: a --results_dir that cannot be made fails before any work
        for folder in sorted({os.path.dirname(out) for out in outs}):
            os.makedirs(folder, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: --results_dir {results_dir}: cannot write there ({e.strerror})")
    if batch_size is None:  # (a CPU gains nothing from batches)
        batch_size = 1 if device.type == 'cpu' else 8
    dtype = getattr(torch, cyclegan.autocast_dtype(dtype, device))
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    todo = [(src, out) for src, out in zip(paths, outs) if out not in kept]
    one_by_one = device.type == 'cpu' or train_mode
    if kept:
        print(f"kept {len(kept)} image(s) translated before; translating {len(todo)}")
    pending, done, t0, t_shown = [], 0, time.time(), time.time()
    for src, out in todo:
        img = data.load_image(src, channels)
        size = img.size
        if load_size is not None:
            img = img.resize(scaled(size, load_size, by_width), Image.BICUBIC)
        x = TF.to_tensor(img) * 2 - 1
        if pending and (len(pending) == batch_size or x.shape != pending[0][0].shape):
            done += write_batch(G, multiple, pending, device, autocast, one_by_one)
            pending = []
        pending.append((x, size, out))
        if done and time.time() - t_shown > 10 and len(todo) > 1:  # a line every 10 s
            rate = done / (time.time() - t0)
            print(f"translated {done}/{len(todo)} | {rate:.1f} img/s | ETA "
                  f"{(len(todo) - done) / rate / 60:.1f} min")
            t_shown = time.time()
    if pending:
        write_batch(G, multiple, pending, device, autocast, one_by_one)
    return outs, kept

def write_batch(G, multiple, batch, device, autocast, one_by_one):
    """Images of one size translated together (one_by_one: each alone, as oneDNN convolutions on
    the CPU round differently at other batch sizes, and batch norm in train mode would mix them);
    each output written at its input's size."""
    x = torch.stack([item[0] for item in batch]).to(device)
    with autocast:
        if one_by_one:
            y = torch.cat([run_generator(G, image[None], multiple) for image in x])
        else:
            y = run_generator(G, x, multiple)
    for image, (_, size, out) in zip(y, batch):
        cyclegan.save_file(png_bytes(image, size), out)
    return len(batch)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('path', help='an image, or a folder of images (searched recursively)')
    p.add_argument('--ckpt', required=True, help='a checkpoint of either script, an official '
                   'generator .pth, or a .safetensors generator')
    p.add_argument('--results_dir', default='results', help='where the PNGs go')
    p.add_argument('--direction', choices=['AtoB', 'BtoA'],
                   help='cyclegan: which generator (default: the direction trained, G_A)')
    p.add_argument('--load_size', type=cyclegan.NATURAL, help='resize as training did, to N: '
                   "the shorter side (the width for scale_width models); default: native size")
    p.add_argument('--batch_size', type=cyclegan.NATURAL,
                   help='images of one size at a time (default: 1 on the CPU, 8 on a GPU)')
    p.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
                   help="autocast precision, as the scripts' (auto: bfloat16 where it is fast)")
    p.add_argument('--test_train_mode', action='store_true',
                   help='run the generator in train mode (dropout, batch statistics)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    args = p.parse_args(argv)
    try:
        outs, kept = translate(args.path, args.ckpt, args.results_dir, args.direction,
                               args.test_train_mode, args.device, args.load_size,
                               args.batch_size, args.dtype)
    except data.DataError as e:
        sys.exit(f"error: {e}; a rerun keeps what was translated")
    print(f"translated {len(outs) - len(kept)} image(s) into {args.results_dir}")

if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the images translated so far are whole; a rerun goes on",
              file=sys.stderr)
        sys.exit(130)

"""Translate images with a trained generator, at their own size or at the training scale.

The generator: a checkpoint of cyclegan.py or pixelgan.py, an official generator .pth, or a
.safetensors file (tools/generators.py reads them all).

    python tools/translate.py --ckpt out/cyclegan/ckpt.pt photos/
    python tools/translate.py --ckpt latest_net_G_A.pth --results_dir results/h2z photo.jpg
    python tools/translate.py --ckpt G.safetensors --load_size 286 photos/   # at the trained scale

Each image goes through the generator in eval mode (--test_train_mode: train mode, as the pix2pix
paper tests) into an 8-bit PNG of the same relative name and size under --results_dir: at its
native size (padded to what the generator needs, cropped back), or with --load_size N resized as
training did and the output resized back. A rerun (after Ctrl-C or a broken image) keeps the
outputs newer than their inputs and writes the rest; no existing file is replaced.
"""
import argparse, collections, io, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
import cyclegan, data
from tools import generators

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
    G, multiple = generators.load_generator(ckpt, direction, obj)
    G.train(train_mode).to(device)
    channels = next(p for p in G.parameters() if p.ndim == 4).shape[1]  # its first conv's
    if channels not in (1, 3):
        sys.exit(f"error: {ckpt}: a generator of {channels}-channel images; images are read as 1 "
                 f"(grayscale) or 3 (RGB) channels")
    trained = obj['args'] if generators.ours(obj) is not None else None  # our checkpoint's args
    by_width = trained is not None and trained['preprocess'].startswith('scale_width')
    if trained is not None and load_size is None:
        size = trained['load_size']
        print(f"note: {ckpt} was trained on images resized to {size} (--preprocess "
              f"{trained['preprocess']}); --load_size {size} translates at that scale",
              file=sys.stderr)
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
        try:
            img = data.load_image(src, channels)
        except data.DataError as e:  # a broken image: the ones read before it are written first
            if pending:
                write_batch(G, multiple, pending, device, autocast, one_by_one)
            sys.exit(f"error: {e}; a rerun keeps what was translated")
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
    except data.DataError as e:  # (the folder's)
        sys.exit(f"error: {e}")
    print(f"translated {len(outs) - len(kept)} image(s) into {args.results_dir}")

if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the images translated so far are whole; a rerun goes on",
              file=sys.stderr)
        sys.exit(130)

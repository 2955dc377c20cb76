"""Generators from files, for tools/translate.py, evaluate.py and export.py: a checkpoint of
cyclegan.py or pixelgan.py, an official generator .pth (ResNet or U-Net, any norm, built as its
keys and shapes say), or a .safetensors file of either (pip install safetensors; export.py writes
the generator's build into its metadata). Every file is read as weights only: nothing in it runs.
"""
import os, re, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.nn as nn
import cyclegan, pixelgan

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
        sys.exit(f"error: {path}: not a readable .safetensors file ({cyclegan.in_one_line(e)})")

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
        args = script.check_checkpoint(obj, path)['args']
        dropout = not args.get('no_dropout', True)
    if script is pixelgan and direction not in (None, args['direction']):
        sys.exit(f"error: --direction {direction}: {path} is a pixelgan checkpoint, which "
                 f"translates {args['direction']} only; drop --direction")
    if script is not None:  # (a missing network: not a generator state_dict, below)
        name = 'G_A' if direction in (None, args['direction']) else 'G_B'
        obj = obj.get('G' if script is pixelgan else name)
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

"""A generator for use without this code, or a checkpoint as the official files.

    python tools/export.py --ckpt out/cyclegan/ckpt.pt --out G.safetensors  # weights only
    python tools/export.py --ckpt out/cyclegan/ckpt.pt --out G.pt2    # torch.export
    python tools/export.py --ckpt out/pixelgan/ckpt.pt --out G.onnx   # needs onnx, onnxscript
    python tools/export.py --ckpt out/cyclegan/ckpt.pt --out official  # latest_net_*.pth

--ckpt is either script's checkpoint, or for the generator formats an official generator .pth or
a .safetensors too. A .safetensors file (pip install safetensors) holds the generator's weights,
and in its metadata what rebuilds it (architecture, depth, width, norm, channels, dropout): no code
runs when it loads, and tools/generators.py reads it for translate, evaluate and export. The .pt2
and .onnx programs hold the generator in eval mode, in float32, with batch, height and width free:
any multiples of what it needs, from 8 pixels (ResNet) or one multiple (U-Net) up. A .pt2 refuses
other sizes (AssertionError: Guard failed: x.size()[2] % 4 == 0); an .onnx model cannot check
them, and onnxruntime fails inside it with a shape error: pad or resize the image first. An
existing file is never replaced, and a file is written whole or not at all.
"""
import argparse, functools, io, os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.fx.experimental._config
import torch.nn as nn
import cyclegan
from tools import generators

def check_new(path):
    """Before any work: path is a new file in a folder that can be made (the scripts' save_file
    then writes it whole or not at all)."""
    if os.path.isdir(path):
        sys.exit(f"error: --out {path} is a folder; give a new file name")
    if os.path.lexists(path):
        sys.exit(f"error: {path} exists; give another --out")
    if os.path.isfile(os.path.dirname(path)):
        sys.exit(f"error: --out {path}: {os.path.dirname(path)} is a file, not a folder")
    probe = f"{path}.{os.getpid()}.probe"
    try:  # the folder made if need be, and written to, now rather than after the export's work
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(probe, 'x').close()
        os.remove(probe)
    except OSError as e:
        sys.exit(f"error: --out {path}: cannot write it ({e.strerror or e}); nothing was written")

def check_weights(script, ckpt, path):
    """Each network built from the checkpoint's flags and given its weights: a damaged checkpoint
    is one line now, not official files that fail to load later."""
    try:
        nets = script.build_model(argparse.Namespace(**ckpt['args']), torch.device('cpu'))[0]
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {path}: its args do not build the networks ({cyclegan.in_one_line(e)})")
    for name, net in nets.items():
        try:
            net.load_state_dict(ckpt[name])
        except (TypeError, AttributeError, RuntimeError, KeyError) as e:  # not these weights
            reason = cyclegan.in_one_line(e)
            sys.exit(f"error: {path}: {name} does not load ({reason}); the checkpoint is damaged")
    if not cyclegan.finite(nets.values()):
        sys.exit(f"error: {path}: its weights are NaN or infinite; it is damaged")

def export_official(script, ckpt, path, folder):
    """Each network of the checkpoint as a bare state_dict in latest_net_<name>.pth, as the
    official test script loads them: all of them, or none if one cannot be written."""
    paths = [os.path.join(folder, f"latest_net_{name}.pth") for name in script.NETWORKS]
    check_weights(script, ckpt, path)
    for new in paths:  # before any is written: none exists
        check_new(new)
    written = []
    try:
        for name, new in zip(script.NETWORKS, paths):
            script.save_file(functools.partial(torch.save, ckpt[name]), new)
            written.append(new)
    except SystemExit:
        for new in written:  # files of this call only
            os.remove(new)
        raise
    print(f"wrote {', '.join(paths)}")

class SizeChecked(nn.Module):
    """G, refusing sides that are not multiples of what it needs (it would return another size):
    torch.export keeps the checks as guards of the program, which a .pt2 tests on every call."""
    def __init__(self, G, multiple):
        super().__init__()
        self.G = G
        self.multiple = multiple

    def forward(self, x):
        torch._check(x.shape[2] % self.multiple == 0)
        torch._check(x.shape[3] % self.multiple == 0)
        return self.G(x)

def export_safetensors(G, out):
    """G's weights as a .safetensors file, with what rebuilds it as its metadata (build_of)."""
    from safetensors.torch import save
    weights = {k: v.contiguous() for k, v in G.state_dict().items()}
    cyclegan.save_file(save(weights, generators.build_of(G)), out)
    print(f"wrote {out}: the weights of a generator ({generators.build_of(G)})")

def export_generator(G, multiple, out):
    """G as out (.pt2 or .onnx), its batch, height and width free."""
    G = G.eval().float().cpu()
    channels = next(p for p in G.parameters() if p.ndim == 4).shape[1]  # its first convolution's
    smallest = max(multiple, 8) // multiple  # in multiples
    height = torch.export.Dim('height', min=smallest)
    width = torch.export.Dim('width', min=smallest)
    dynamic = {'x': {0: torch.export.Dim('batch', min=1), 2: multiple * height,
                     3: multiple * width}}
    example = torch.randn(2, channels, 2 * max(multiple, 8), 2 * max(multiple, 8))
    model = SizeChecked(G, multiple).eval()
    # the U-Net's innermost level is 1x1 at the smallest size: without size-oblivious reasoning
    # torch.export would keep that size out of the range
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        if out.lower().endswith('.pt2'):
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
            buffer = io.BytesIO()  # in memory first: torch's writer aborts on a full disk
            torch.export.save(program, buffer)
            payload = buffer.getvalue()
        else:
            program = torch.onnx.export(model, (example,), dynamic_shapes=dynamic, dynamo=True,
                                        verbose=False)
            payload = program.model_proto.SerializeToString()  # one file, weights inside
    cyclegan.save_file(payload, out)
    print(f"wrote {out}: input N x {channels} x H x W in [-1, 1], H and W multiples of "
          f"{multiple} from {smallest * multiple}")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ckpt', required=True, help="a checkpoint of either script, or a generator "
                   "file (an official .pth, a .safetensors) for the generator formats")
    p.add_argument('--out', required=True,
                   help='G.safetensors, G.pt2, G.onnx, or a folder for the official files')
    p.add_argument('--direction', default=None, choices=['AtoB', 'BtoA'],
                   help="cyclegan: which generator (default: the direction trained, G_A)")
    args = p.parse_args(argv)
    kind = os.path.splitext(args.out)[1].lower()
    if kind not in ('', '.safetensors', '.pt2', '.onnx') or not args.out.strip():
        sys.exit(f"error: --out {args.out!r}: give G.safetensors, G.pt2, G.onnx, or a folder "
                 f"(no extension) for the official latest_net_*.pth files")
    obj = None  # (a .safetensors generator: generators.load_generator reads it)
    if not args.ckpt.lower().endswith('.safetensors'):
        obj = cyclegan.load_file(args.ckpt)  # weights only
    script = generators.ours(obj)
    if kind == '' and script is None:
        sys.exit(f"error: {args.ckpt} holds a generator, not a checkpoint of cyclegan.py or "
                 f"pixelgan.py: the official files come from a checkpoint")
    if kind == '':
        export_official(script, script.check_checkpoint(obj, args.ckpt),
                        args.ckpt, args.out)
        return
    check_new(args.out)  # before the export's minutes: a bad --out is one line now
    try:  # (the packages each format needs)
        if kind == '.onnx':
            import onnx, onnxscript  # noqa: F401
        if kind == '.safetensors':
            import safetensors  # noqa: F401
    except ImportError:
        sys.exit(f"error: a {kind} export needs its package: pip install "
                 f"{'onnx onnxscript' if kind == '.onnx' else 'safetensors'}")
    G, multiple = generators.load_generator(args.ckpt, args.direction, obj)
    if kind == '.safetensors':
        export_safetensors(G.eval(), args.out)
    else:
        export_generator(G, multiple, args.out)

if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)

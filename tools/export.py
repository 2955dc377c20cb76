"""A generator for use without this code, or a checkpoint as the official files.

    python tools/export.py --ckpt out/cyclegan/ckpt.pt --out G.pt2    # torch.export
    python tools/export.py --ckpt out/pixelgan/ckpt.pt --out G.onnx   # needs onnx, onnxscript
    python tools/export.py --ckpt out/cyclegan/ckpt.pt --out official/  # latest_net_*.pth

--ckpt is either script's checkpoint, or for .pt2 and .onnx an official generator .pth too. The
generator is exported in eval mode, in float32, with batch, height and width free: any multiples
of what it needs, from 8 pixels (ResNet) or one multiple (U-Net) up. An existing file is never
replaced.
"""
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.fx.experimental._config
import cyclegan, pixelgan

def export_official(script, ckpt, folder):
    """Each network of the checkpoint as a bare state_dict in latest_net_<name>.pth, as the
    official test script loads them."""
    paths = [os.path.join(folder, f"latest_net_{name}.pth") for name in script.NETWORKS]
    for path in paths:
        if os.path.exists(path):
            sys.exit(f"error: {path} exists; give another --out folder")
    script.check_writable(folder, '--out')
    for name, path in zip(script.NETWORKS, paths):
        script.save_checkpoint(ckpt[name], path)
    print(f"wrote {', '.join(paths)}")

def export_generator(G, multiple, out):
    """G as out (.pt2 or .onnx), its batch, height and width free; written beside out first."""
    G = G.eval().float().cpu()
    channels = cyclegan.input_channels(G)
    smallest = max(multiple, 8) // multiple  # in multiples
    height = torch.export.Dim('height', min=smallest)
    width = torch.export.Dim('width', min=smallest)
    dynamic = {'x': {0: torch.export.Dim('batch', min=1), 2: multiple * height,
                     3: multiple * width}}
    example = torch.randn(2, channels, 2 * max(multiple, 8), 2 * max(multiple, 8))
    tmp = out + '.tmp' + os.path.splitext(out)[1]
    # the U-Net's innermost level is 1x1 at the smallest size: without size-oblivious reasoning
    # torch.export would keep that size out of the range
    try:
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            if out.endswith('.pt2'):
                program = torch.export.export(G, (example,), dynamic_shapes=dynamic)
                torch.export.save(program, tmp)
            else:
                torch.onnx.export(G, (example,), tmp, dynamic_shapes=dynamic, dynamo=True,
                                  verbose=False, external_data=False)  # one file
        os.replace(tmp, out)
    except (OSError, RuntimeError) as e:
        sys.exit(f"error: could not write {out} ({cyclegan.first_line(e)})")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {out}: input N x {channels} x H x W in [-1, 1], H and W multiples of "
          f"{multiple} from {smallest * multiple}")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ckpt', required=True, help="a checkpoint of either script, or an official "
                   "generator .pth (for .pt2 and .onnx)")
    p.add_argument('--out', required=True, help='G.pt2, G.onnx, or a folder for the official files')
    p.add_argument('--direction', default=None, choices=['AtoB', 'BtoA'],
                   help="cyclegan: which generator (default: the direction trained, G_A)")
    args = p.parse_args(argv)
    obj = cyclegan.load_file(args.ckpt)  # weights only
    name = 'pixelgan'  # (an official file: pixelgan.py reads both U-Net and ResNet generators)
    if isinstance(obj, dict) and obj.get('script') == 'cyclegan':
        name = 'cyclegan'
    script = {'cyclegan': cyclegan, 'pixelgan': pixelgan}[name]
    ours = isinstance(obj, dict) and 'script' in obj
    kind = os.path.splitext(args.out)[1]
    if ours or kind not in ('.pt2', '.onnx'):  # our checkpoint, complete, or one line
        script.check_checkpoint(obj, args.ckpt, name)
    if kind not in ('.pt2', '.onnx'):
        export_official(script, obj, args.out)
        return
    if os.path.exists(args.out):
        sys.exit(f"error: {args.out} exists; give another --out")
    if kind == '.onnx':
        try:
            import onnx, onnxscript  # noqa: F401 (torch.onnx needs both)
        except ImportError:
            sys.exit("error: an .onnx export needs the onnx packages: pip install onnx onnxscript")
    direction = args.direction
    if direction is None and name == 'cyclegan':
        direction = obj['args']['direction']
    G, multiple = script.load_generator(args.ckpt, direction or 'AtoB', obj)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_generator(G, multiple, args.out)

if __name__ == '__main__':
    main()

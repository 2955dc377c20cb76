"""Scores for a checkpoint on held-out data, or FID and KID of two folders of images.

    python tools/evaluate.py --ckpt out/pixelgan/ckpt.pt --dataroot datasets/facades
    python tools/evaluate.py --ckpt out/cyclegan/ckpt.pt --fid
    python tools/evaluate.py --real datasets/horse2zebra/testB --fake results/h2z

--ckpt: what the run's evaluations log, for either script's checkpoint (the flags of its run, the
script's flags given here on top; --dataroot defaults to the run's), or a generator file (an
official .pth or a .safetensors), scored as pixelgan.py scores its generator on the paired test or
val split of --dataroot. PSNR where there is ground truth (pixelgan: also L1); FID and KID with
--fid (the FID Inception weights where `python tools/download.py model fid_inception` puts them)
or --fid_weights FILE (or $FID_WEIGHTS). A file not asked for here ($FID_WEIGHTS, the run's own)
that cannot give FID is a note, and no FID. --real/--fake: FID, and KID's mean and standard
deviation, of every image in the two folders. Prints the scores, then one JSON line.
"""
import argparse, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torchvision.transforms.functional as TF
import cyclegan, data, pixelgan
from tools import fid, generators

def folder_features(features, folder, device):
    """The features of every image under folder, each at its own size, one at a time."""
    paths = data.find_images(folder)
    if len(paths) < 2:
        sys.exit(f"error: {folder}: FID needs at least 2 images; it has {len(paths)}")
    images = (TF.to_tensor(data.load_image(p, 3))[None].to(device) * 2 - 1 for p in paths)
    return torch.cat([features(x) for x in images])

def note_no_fid(e):
    """Why there is no FID, in one line on stderr (stdout ends in the JSON line)."""
    print(f"note: no FID or KID: {str(e.code).removeprefix('error: ')}", file=sys.stderr)

def optional_features(args, device, strict):
    """The FID network; where one not asked for here cannot be used, a note and None."""
    try:
        return fid.FeatureNetwork(args.fid_weights or fid.default_weights(), device)
    except fid.FeatureError as e:
        if strict:
            raise
        note_no_fid(e)
        args.fid, args.fid_weights = False, None
        return None

def held_out(script, args, strict, features):
    """The script's held-out data and its real images' features; where they cannot give FID not
    asked for here (no test split, too few images), a note, and no features."""
    try:
        held = script.held_out_data(args)
        if script is cyclegan:
            return held, {k: features.of_dataset(held.domain(k), k) for k in 'AB'}
        return held, features.of_dataset(held, 'B')
    except SystemExit as e:  # (a FeatureError is one)
        if strict:
            raise
        note_no_fid(e)
        args.fid, args.fid_weights = False, None
        return script.held_out_data(args), None

def score_checkpoint(path, argv):
    """What a run's evaluation logs, for the checkpoint at path, with the flags argv."""
    obj = None  # (a .safetensors generator: generators.load_generator reads it)
    if not path.lower().endswith('.safetensors'):
        obj = cyclegan.load_file(path)
    script = generators.ours(obj) or pixelgan  # (a generator file: as pixelgan.py scores G)
    args, given = script.parse_args(argv)
    if generators.ours(obj) is not None:
        args, obj = script.resume_args(given, path, 'evaluate')
    elif args.dataroot is None:
        sys.exit(f"error: {path} holds a generator, which knows no data: give --dataroot (a "
                 f"folder with a paired test or val split)")
    script.check_run(args)
    if 'fid_weights' not in given and os.environ.get('FID_WEIGHTS'):
        args.fid_weights = os.environ['FID_WEIGHTS']
    device = script.pick_device(args.device)
    strict = 'fid_weights' in given or 'fid' in given  # typed here; else $FID_WEIGHTS or the run's
    features = None
    if args.fid or args.fid_weights:
        features = optional_features(args, device, strict)
    held, reals = None, None
    if features is not None:
        held, reals = held_out(script, args, strict, features)
    if reals is None:
        held, features = script.held_out_data(args), None
    if script is cyclegan:
        if args.dataroot is not None and features is None:
            sys.exit(f"error: {args.dataroot}: unpaired images have no ground truth; give --fid "
                     f"for FID and KID on testA and testB")
        other = {'AtoB': 'BtoA', 'BtoA': 'AtoB'}[args.direction]
        G_A = generators.load_generator(path, args.direction, obj)[0].to(device)
        G_B = generators.load_generator(path, other, obj)[0].to(device)
        return cyclegan.evaluate(G_A, G_B, held, device, features, reals)
    if held is None:
        sys.exit(f"error: {args.dataroot}: no test or val split (test/, val/, A/test or A/val)")
    G = generators.load_generator(path, obj=obj)[0].to(device)
    return pixelgan.evaluate(G, held, device, args.test_train_mode, features, reals)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument('--real', help='a folder of real images (with --fake)')
    p.add_argument('--fake', help='a folder of generated images (with --real)')
    p.add_argument('--ckpt', help='a checkpoint of either script, or a generator file')
    p.add_argument('--fid_weights', default=os.environ.get('FID_WEIGHTS'))
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    p.add_argument('-h', '--help', action='store_true')
    own, rest = p.parse_known_args(argv)
    if own.help:
        print(__doc__)
        return {}
    if own.ckpt and (own.real or own.fake):
        sys.exit("error: give --ckpt, or --real and --fake: not both")
    try:
        if own.real and own.fake:
            device = cyclegan.pick_device(own.device)
            features = fid.FeatureNetwork(own.fid_weights or fid.default_weights(), device)
            scores = features.distances(folder_features(features, own.real, device),
                                        folder_features(features, own.fake, device))
        elif own.ckpt:
            scores = score_checkpoint(own.ckpt, argv)
        else:
            sys.exit("error: give --ckpt FILE, or --real DIR and --fake DIR; --help says more")
    except data.DataError as e:
        sys.exit(f"error: {e}")
    print(' '.join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(json.dumps(scores, allow_nan=False))
    return scores

if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)

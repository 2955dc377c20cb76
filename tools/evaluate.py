"""Scores for a checkpoint on held-out data, or FID and KID of two folders of images.

    python tools/evaluate.py --ckpt out/pixelgan/ckpt.pt --dataroot datasets/facades
    python tools/evaluate.py --ckpt out/cyclegan/ckpt.pt --fid_weights pt_inception.pth
    python tools/evaluate.py --real datasets/horse2zebra/testB --fake results/cyclegan \\
        --fid_weights pt_inception-2015-12-05-6726825d.pth

--ckpt: what the run's evaluations log, for either script's checkpoint (the flags of its run,
with the script's flags given here on top; --dataroot defaults to the run's) or an official
generator .pth (scored as pixelgan.py does, against a paired test or val split): PSNR where
there is ground truth (pixelgan: also L1), FID and KID given --fid_weights (or $FID_WEIGHTS;
one not typed here, from $FID_WEIGHTS or the run's flags, that cannot give them is a note and
no FID). --real/--fake: FID, and KID's mean and standard deviation, of every image in the two
folders (tools/fid.py says which --fid_weights files work). Prints the scores, then one JSON
line.
"""
import argparse, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torchvision.transforms.functional as TF
import cyclegan, data, pixelgan
from tools import translate

def folder_features(features, folder, device):
    """The features of every image under folder, each at its own size."""
    images = [TF.to_tensor(data.load_image(p, 3)) * 2 - 1 for p in data.find_images(folder)]
    if len(images) < 2:
        sys.exit(f"error: {folder}: FID needs at least 2 images; it has {len(images)}")
    return torch.cat([features(x[None].to(device)) for x in images])

def compare_folders(real, fake, fid_weights, device):
    """FID and KID of the images in fake against those in real."""
    from tools.fid import FeatureNetwork
    if not fid_weights:
        sys.exit("error: --real/--fake need --fid_weights FILE (or $FID_WEIGHTS)")
    features = FeatureNetwork(fid_weights, device)
    return features.distances(folder_features(features, real, device),
                              folder_features(features, fake, device))

def note_no_fid(e):
    """Why there is no FID, in one line on stderr (stdout ends in the JSON line)."""
    print(f"note: no FID or KID: {str(e.code).removeprefix('error: ')}", file=sys.stderr)

def optional_features(args, device, strict):
    """The --fid_weights network; where one not given here cannot be used, a note and None."""
    from tools.fid import FeatureError, FeatureNetwork
    try:
        return FeatureNetwork(args.fid_weights, device)
    except FeatureError as e:
        if strict:
            raise
        note_no_fid(e)
        args.fid_weights = None
        return None

def held_out(script, args, strict):
    """The script's held-out data; where it cannot give FID not asked for here (no test split,
    too few images), a note and the data without FID."""
    try:
        return script.held_out_data(args)
    except SystemExit as e:
        if strict or not args.fid_weights:
            raise
        note_no_fid(e)
        args.fid_weights = None
        return script.held_out_data(args)

def score_checkpoint(path, argv):
    """What a run's evaluation logs, for the checkpoint at path, with the flags argv."""
    obj = cyclegan.load_file(path)
    name = 'pixelgan'  # (an official file: scored as pixelgan.py scores its generator)
    if isinstance(obj, dict) and obj.get('script') == 'cyclegan':
        name = 'cyclegan'
    script = {'cyclegan': cyclegan, 'pixelgan': pixelgan}[name]
    args, given = script.parse_args(argv)
    if isinstance(obj, dict) and 'script' in obj:
        args, obj = script.resume_args(given, path)  # the run's flags, those given on top
    if 'fid_weights' not in given and os.environ.get('FID_WEIGHTS'):
        args.fid_weights = os.environ['FID_WEIGHTS']
    device = script.pick_device(args.device)
    strict = 'fid_weights' in given  # typed here; else $FID_WEIGHTS or the run's own flag
    features = None
    if args.fid_weights:
        features = optional_features(args, device, strict)
    if script is cyclegan:
        G_A = translate.load_generator(path, args.direction, obj)[0].to(device)
        G_B = translate.load_generator(path, 'BtoA' if args.direction == 'AtoB' else 'AtoB', obj)
        held = held_out(cyclegan, args, strict)
        if not args.fid_weights:
            features = None
        if args.dataroot is not None and features is None:
            sys.exit(f"error: {args.dataroot}: unpaired images have no ground truth; give "
                     f"--fid_weights FILE for FID and KID on testA and testB")
        return cyclegan.evaluate(G_A, G_B[0].to(device), held, device, features)
    G, _ = translate.load_generator(path, obj=obj)
    held = held_out(pixelgan, args, strict)
    if not args.fid_weights:
        features = None
    if held is None:
        sys.exit(f"error: {args.dataroot}: no test or val split (test/, val/, A/test or A/val)")
    return pixelgan.evaluate(G.to(device), held, device, args.test_train_mode, features)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument('--real', help='a folder of real images (with --fake)')
    p.add_argument('--fake', help='a folder of generated images (with --real)')
    p.add_argument('--ckpt', help='a checkpoint of either script, or an official generator .pth')
    p.add_argument('--fid_weights', default=os.environ.get('FID_WEIGHTS'))
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    p.add_argument('-h', '--help', action='store_true')
    own, rest = p.parse_known_args(argv)
    if own.help:
        print(__doc__)
        return {}
    try:
        if own.real and own.fake:
            device = cyclegan.pick_device(own.device)
            scores = compare_folders(own.real, own.fake, own.fid_weights, device)
        elif own.ckpt:
            scores = score_checkpoint(own.ckpt, argv)
        else:
            sys.exit("error: give --ckpt FILE, or --real DIR and --fake DIR; --help says more")
    except data.DataError as e:
        sys.exit(f"error: {e}")
    print(' '.join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(json.dumps(scores))
    return scores

if __name__ == '__main__':
    main()

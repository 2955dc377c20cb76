"""FID and KID for cyclegan.py, pixelgan.py and tools/evaluate.py: the feature network and the
two distances. The scripts import it only when --fid_weights (or $FID_WEIGHTS) is given.

FeatureNetwork(FILE) takes one of:
- the standard FID Inception weights, pt_inception-2015-12-05-6726825d.pth as pytorch-fid and
  torch-fidelity download them (needs torchmetrics and torch-fidelity);
- a network exported with torch.export (.pt2) or TorchScript: it gets 299x299 RGB in [-1, 1]
  and returns (N, D) features (needs torchmetrics).
Nothing is downloaded: without the file there is no FID.
"""
import os, sys, warnings, zipfile
import torch
import torch.nn as nn
import torch.nn.functional as F

def first_line(e):
    """An exception's message in one line, even an empty one."""
    return (str(e).strip() or type(e).__name__).splitlines()[0][:160]

def load_inception(path):
    """torch-fidelity's FID Inception network, as torchmetrics runs it, with the weights in path:
    its own resize to 299x299 (antialias off, as TensorFlow's), its 2048 pool features."""
    try:  # weights only first: torch-fidelity's own load would run any code in the file
        torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        sys.exit(f"error: --fid_weights {path}: not a loadable weights file, or one that would "
                 f"run code when loaded ({first_line(e)})")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        return NoTrainInceptionV3('inception-v3-compat', ['2048'], path, antialias=False)
    except ModuleNotFoundError:
        sys.exit("error: --fid_weights: the Inception weights need torch-fidelity: "
                 "pip install torch-fidelity")
    except Exception as e:  # whatever the file holds instead
        sys.exit(f"error: --fid_weights {path}: not the FID Inception weights, a .pt2 export or "
                 f"a TorchScript file ({first_line(e)})")

def load_exported(path):
    """A feature network of one's own: a torch.export file (.pt2) or TorchScript."""
    try:
        if path.endswith('.pt2'):
            return torch.export.load(path).module()
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(path, map_location='cpu')
    except Exception as e:  # whatever the file holds instead
        sys.exit(f"error: --fid_weights {path}: not a loadable feature network ({first_line(e)})")

def is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') for name in archive.namelist())

class PassFeatures(nn.Module):
    """torchmetrics runs its `feature` module on what update() gets; these get features already
    computed (once for both metrics), so the module passes them on."""
    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x

class FeatureNetwork:
    """--fid_weights FILE: called on images in [-1, 1] (any size, 1 or 3 channels), it rounds them
    to 8 bits as a saved PNG would and returns an (N, D) feature matrix. Tried on two images when
    made, so that a bad file stops a run before training, not at its first evaluation."""
    def __init__(self, path, device):
        if not os.path.isfile(path):
            sys.exit(f"error: --fid_weights {path}: no such file")
        try:
            import torchmetrics  # noqa: F401 (distances() needs it)
        except ImportError:
            sys.exit("error: --fid_weights needs torchmetrics: pip install torchmetrics")
        self.inception = not path.endswith('.pt2') and not is_torchscript(path)
        if self.inception:
            self.net = load_inception(path)
        else:
            self.net = load_exported(path)
        self.net.to(device)
        try:
            shape = tuple(self(torch.zeros(2, 3, 32, 32, device=device)).shape)
        except Exception as e:
            sys.exit(f"error: --fid_weights {path}: the network fails on a batch of 2 images "
                     f"({first_line(e)})")
        if len(shape) != 2 or shape[0] != 2:
            sys.exit(f"error: --fid_weights {path}: gives features of shape {shape} for 2 images; "
                     f"an (N, D) matrix is needed")

    @torch.no_grad()
    def __call__(self, images):
        levels = ((images.float() + 1) * 127.5).round().clamp(0, 255)
        levels = levels.expand(-1, 3, -1, -1)  # grayscale as RGB
        if self.inception:
            return self.net(levels.to(torch.uint8)).float()
        x = F.interpolate(levels / 127.5 - 1, size=(299, 299), mode='bilinear',
                          align_corners=False)
        return self.net(x).float()

    @staticmethod
    def distances(real, fake):
        """FID (Heusel et al. 2017: the Frechet distance of two Gaussians fitted to the features)
        and KID (Binkowski et al. 2018: the unbiased MMD^2 with a cubic polynomial kernel, mean and
        standard deviation over 100 subsets of up to 1000 images), by torchmetrics in float64.
        Lower is better. KID's subsets come from a fixed seed: the same features give the same
        KID, and the caller's random stream is left untouched."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        real, fake = real.cpu(), fake.cpu()
        subset_size = min(1000, len(real), len(fake))
        with warnings.catch_warnings():  # KID warns that it keeps every feature: a few MB here
            warnings.simplefilter('ignore', UserWarning)
            fid = FrechetInceptionDistance(PassFeatures(real.shape[1]))
            kid = KernelInceptionDistance(PassFeatures(real.shape[1]), subset_size=subset_size)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)  # the CPU's alone: KID draws its subsets there
            for metric in (fid, kid):
                metric.update(real, real=True)
                metric.update(fake, real=False)
            kid_mean, kid_std = kid.compute()
            return dict(fid=fid.compute().item(), kid=kid_mean.item(), kid_std=kid_std.item())

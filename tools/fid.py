"""FID and KID for cyclegan.py, pixelgan.py and tools/evaluate.py: the feature network and the
two distances. The scripts import it only when --fid_weights is given.

FeatureNetwork(FILE) takes one of:
- the standard FID Inception weights, pt_inception-2015-12-05-6726825d.pth as pytorch-fid and
  torch-fidelity download them (needs torchmetrics and torch-fidelity);
- a network exported with torch.export (.pt2) or TorchScript: it gets 299x299 RGB in [-1, 1]
  and returns (N, D) features for any batch size N (needs torchmetrics).
Nothing is downloaded: without the file there is no FID. Nothing in the file is run as Python.
"""
import contextlib, logging, os, pickle, warnings, zipfile
from unittest import mock
import torch
import torch.nn as nn
import torch.nn.functional as F

class FeatureError(SystemExit):
    """A --fid_weights file that gives no features: one line and a non-zero exit, as
    sys.exit(message) would, unless the caller catches it (to save first, or to go on without
    FID where the file came from $FID_WEIGHTS, as tools/evaluate.py does)."""

def first_line(e):
    """An exception's message in one line, even an empty one."""
    return (str(e).strip() or type(e).__name__).splitlines()[0][:160]

def refuse_pickle(*args, **kwargs):
    raise pickle.UnpicklingError("a pickled Python object, which could run code")

def load_pt2(path):
    """torch.export.load, with nothing in the file run. torch (2.14) loads a payload again with
    weights_only=False when the safe load fails, and some constants with pickle itself: here
    torch's own switch makes every torch.load weights-only, and the other unpickling is refused.
    Its warnings (one with a traceback) are silenced: a failure is one line."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ))  # as it was again on leaving
        os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)  # (both set: torch refuses)
        os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'
        stack.enter_context(mock.patch('pickle.loads', refuse_pickle))
        stack.enter_context(mock.patch('torch._C._pickle_load_obj', refuse_pickle, create=True))
        logging.disable(logging.WARNING)
        stack.callback(logging.disable, logging.NOTSET)
        return torch.export.load(path)

def load_inception(path):
    """torch-fidelity's FID Inception network, as torchmetrics runs it, with the weights in path:
    its own resize to 299x299 (antialias off, as TensorFlow's), its 2048 pool features."""
    try:  # weights only first: torch-fidelity's own load would run any code in the file
        torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise FeatureError(f"error: --fid_weights {path}: not a loadable weights file, or one "
                           f"that would run code when loaded ({first_line(e)})") from None
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        return NoTrainInceptionV3('inception-v3-compat', ['2048'], path, antialias=False)
    except ModuleNotFoundError:
        raise FeatureError("error: --fid_weights: the Inception weights need torch-fidelity: "
                           "pip install torch-fidelity") from None
    except Exception as e:  # whatever the file holds instead
        raise FeatureError(f"error: --fid_weights {path}: not the FID Inception weights, a .pt2 "
                           f"export or a TorchScript file ({first_line(e)})") from None

def load_exported(path):
    """A feature network of one's own: a torch.export file (.pt2) or TorchScript."""
    try:
        if path.endswith('.pt2'):
            return load_pt2(path).module()
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(path, map_location='cpu')
    except pickle.UnpicklingError:  # what a weights-only load raises on anything but tensors
        raise FeatureError(f"error: --fid_weights {path}: refused: it holds pickled Python "
                           f"objects, which could run code when loaded") from None
    except Exception as e:  # whatever the file holds instead
        raise FeatureError(f"error: --fid_weights {path}: not a loadable feature network "
                           f"({first_line(e)})") from None

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
    to 8 bits as a saved PNG would and returns an (N, D) feature matrix. Tried when made on
    batches of 2, 3 and 1 images (a batch fixed at one size, and torch.export's special case of
    1), so that a bad file stops a run before training, not at its first evaluation; a network of
    one's own then only ever gets batches of those sizes."""
    def __init__(self, path, device):
        self.path = path
        if os.path.isdir(path):
            raise FeatureError(f"error: --fid_weights {path}: a folder, not a file; give the "
                               f"weights file")
        if not os.path.isfile(path):
            raise FeatureError(f"error: --fid_weights {path}: no such file")
        try:
            import torchmetrics  # noqa: F401 (distances() needs it)
        except ImportError:
            raise FeatureError("error: --fid_weights needs torchmetrics: pip install "
                               "torchmetrics") from None
        self.inception = not path.endswith('.pt2') and not is_torchscript(path)
        if self.inception:
            self.net = load_inception(path)
        else:
            self.net = load_exported(path)
        self.net.to(device)
        widths = set()
        for n in (2, 3, 1):
            try:
                shape = tuple(self(torch.zeros(n, 3, 32, 32, device=device)).shape)
            except FeatureError as e:
                raise FeatureError(f"{e.code}; it must take any batch size") from None
            if len(shape) != 2 or shape[0] != n:
                raise FeatureError(f"error: --fid_weights {path}: gives features of shape {shape} "
                                   f"for {n} images; an (N, D) matrix is needed")
            widths.add(shape[1])
        if len(widths) > 1:
            raise FeatureError(f"error: --fid_weights {path}: gives {sorted(widths)} features "
                               f"at different batch sizes; one D is needed")

    @torch.no_grad()
    def __call__(self, images):
        levels = ((images.float() + 1) * 127.5).round().clamp(0, 255)
        levels = levels.expand(-1, 3, -1, -1)  # grayscale as RGB
        x = levels.to(torch.uint8)
        batches = [x]
        if not self.inception:  # in batches of 1 to 3 images, as tried at start-up
            x = F.interpolate(levels / 127.5 - 1, size=(299, 299), mode='bilinear',
                              align_corners=False)
            batches = x.split(3)
        try:
            return torch.cat([self.net(batch) for batch in batches]).float()
        except Exception as e:  # at start-up or at an evaluation: one line, never a traceback
            reason = first_line(e)
            if isinstance(e, torch.jit.Error):  # TorchScript's own error comes last
                reason = str(e).strip().splitlines()[-1]
            raise FeatureError(f"error: --fid_weights {self.path}: the network fails on a batch "
                               f"of {len(x)} images ({reason})") from None

    @staticmethod
    def distances(real, fake):
        """FID (Heusel et al. 2017: the Frechet distance of two Gaussians fitted to the features)
        and KID (Binkowski et al. 2018: the unbiased MMD^2 with a cubic polynomial kernel, mean and
        standard deviation over 100 subsets of up to 1000 images), by torchmetrics in float64.
        Lower is better. KID's subsets come from a fixed seed: the same features give the same
        KID, and the caller's random stream is left untouched. Never synced across processes:
        under torchrun rank 0 alone evaluates, on all the features."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        real, fake = real.cpu(), fake.cpu()
        subset_size = min(1000, len(real), len(fake))
        with warnings.catch_warnings():  # KID warns that it keeps every feature: a few MB here
            warnings.simplefilter('ignore', UserWarning)
            fid = FrechetInceptionDistance(PassFeatures(real.shape[1]), sync_on_compute=False)
            kid = KernelInceptionDistance(PassFeatures(real.shape[1]), subset_size=subset_size,
                                          sync_on_compute=False)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)  # the CPU's alone: KID draws its subsets there
            for metric in (fid, kid):
                metric.update(real, real=True)
                metric.update(fake, real=False)
            kid_mean, kid_std = kid.compute()
            return dict(fid=fid.compute().item(), kid=kid_mean.item(), kid_std=kid_std.item())

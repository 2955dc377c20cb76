"""FID and KID for cyclegan.py, pixelgan.py and tools/evaluate.py: the feature network and the
two distances. The scripts import it only when FID is asked for (--fid or --fid_weights).

The feature network is the standard FID Inception (Heusel et al. 2017: TensorFlow's Inception of
2015-12-05, as pytorch-fid and torch-fidelity run it), written out here; its weights are data:
pt_inception-2015-12-05-6726825d.pth, fetched by `python tools/download.py model fid_inception`
into torch's hub folder (where pytorch-fid keeps it too), or any copy of it given as FILE. The
file is read as weights only, into this architecture: a program (TorchScript, torch.export) is
refused, and nothing in the file ever runs.
"""
import hashlib, os, sys, zipfile
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import inception
import data

WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_SHA256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'

class FeatureError(SystemExit):
    """A feature network that gives no features: one line and a non-zero exit, as sys.exit(message)
    would, unless the caller catches it (tools/evaluate.py goes on without FID where the file
    was not asked for on its command line)."""

def default_weights():
    """Where tools/download.py puts the weights, and where FID looks without --fid_weights."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', WEIGHTS_NAME)

# -----------------------------------------------------------------------------
# the network: torchvision's Inception v3 with TensorFlow's pooling, which the weights expect

def average_pool(x):
    """TensorFlow's 3x3 average pool: the padding is left out of the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

class InceptionA(inception.InceptionA):
    def _forward(self, x):
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), branch5x5, branch3x3, self.branch_pool(average_pool(x))]

class InceptionC(inception.InceptionC):
    def _forward(self, x):
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        return [self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(average_pool(x))]

class InceptionE(inception.InceptionE):
    """The last block (Mixed_7c) max-pools its pooling branch, as TensorFlow's graph does."""
    max_pool = False

    def _forward(self, x):
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
        pooled = average_pool(x)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [self.branch1x1(x), branch3x3, double, self.branch_pool(pooled)]

def fid_inception():
    """The network the weights file describes: 1008 classes, no auxiliary head."""
    blocks = [inception.BasicConv2d, InceptionA, inception.InceptionB, InceptionC,
              inception.InceptionD, InceptionE, inception.InceptionAux]
    net = inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False,
                               inception_blocks=blocks)
    net.Mixed_7c.max_pool = True
    return net

def resize_like_tensorflow(x, size=299):
    """Bilinear resizing as TensorFlow 1 did it for the original FID (no half-pixel centres,
    no antialiasing): along the width, then the height, as torch-fidelity does."""
    for dim in (3, 2):
        n = x.shape[dim]
        source = torch.arange(size, dtype=torch.float32, device=x.device) * (n / size)
        low = source.long()
        high = (low + 1).clamp_max(n - 1)
        weight = source - low
        if dim == 2:
            weight = weight[:, None]  # one weight a row
        x_low, x_high = x.index_select(dim, low), x.index_select(dim, high)
        x = x_low + (x_high - x_low) * weight
    return x

# -----------------------------------------------------------------------------
# the weights file, checked

def is_program(path):
    """A TorchScript or torch.export archive: code, which --fid_weights never runs."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith(('/constants.pkl', '/archive_format')) or '/code/' in n for n in names)

def load_inception(path):
    """The Inception network with the weights in path, or one line that says what path is."""
    if os.path.isdir(path):
        raise FeatureError(f"error: --fid_weights {path}: a folder, not a file; give the weights "
                           f"file")
    if not os.path.isfile(path):
        raise FeatureError(f"error: --fid_weights {path}: no such file; python "
                           f"tools/download.py model fid_inception fetches it")
    if is_program(path):
        raise FeatureError(f"error: --fid_weights {path}: refused: a program (TorchScript or "
                           f"torch.export), not weights; give the FID Inception weights "
                           f"({WEIGHTS_NAME})")
    try:
        weights = torch.load(path, map_location='cpu', weights_only=True)
        net = fid_inception()
        net.load_state_dict(weights)
    except Exception as e:  # pickled objects, another network's weights, a damaged file
        reason = ' '.join(str(e).split())[:200] or type(e).__name__
        raise FeatureError(f"error: --fid_weights {path}: not the FID Inception weights "
                           f"({reason})") from None
    if not all(t.isfinite().all() for t in net.state_dict().values() if t.is_floating_point()):
        raise FeatureError(f"error: --fid_weights {path}: its weights are not all finite")
    net.fc = nn.Identity()  # the 2048 pool features are FID's, not the classes
    return net.eval().requires_grad_(False)

def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

class FeatureNetwork:
    """Called on images in [-1, 1] (any size, 1 or 3 channels, any number), it rounds them to 8 bits
    as a saved PNG would, resizes them to 299x299 and returns their (N, 2048) features, in chunks
    of a bounded size. Tried when made on two different images: features that are not finite,
    or that do not depend on the image, stop a run before training. A file that is not the
    published one (its SHA-256) is said so once: its scores compare with no published ones."""
    def __init__(self, path, device, chunk=16):
        self.path = path
        self.device = device
        self.net = load_inception(path).to(device)
        self.chunk = chunk
        ramp = torch.linspace(-1, 1, 64, device=device).expand(1, 3, 64, 64)
        probe = self(torch.cat([-torch.ones_like(ramp), ramp]))
        if not probe.isfinite().all():
            raise FeatureError(f"error: --fid_weights {path}: its features are not finite; the "
                               f"file is damaged")
        if torch.equal(probe[0], probe[1]):
            raise FeatureError(f"error: --fid_weights {path}: gives the same features for "
                               f"different images; the file is damaged")
        first = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if sha256(path) != WEIGHTS_SHA256 and first:
            print(f"note: --fid_weights {path} is not the published FID Inception file (its "
                  f"SHA-256 differs): its scores compare with no published ones", file=sys.stderr)

    @torch.no_grad()
    def __call__(self, images):
        features = []
        for x in images.split(self.chunk):
            levels = ((x.float() + 1) * 127.5).round().clamp(0, 255).expand(-1, 3, -1, -1)
            x = resize_like_tensorflow(levels)
            features.append(self.net((x - 128) / 128).float())
        return torch.cat(features)

    @torch.no_grad()
    def of_dataset(self, dataset, key):
        """The features of the images dataset[i][key] (at least 2), each process computing its
        share, every process getting them all: those of a run's real held-out images, once."""
        if len(dataset) < 2:
            raise FeatureError(f"error: --fid: FID needs at least 2 held-out images; {key} has "
                               f"{len(dataset)}")
        rows = [self(batch[key].to(self.device)) for batch in data.share_loader(dataset)]
        return data.gather(torch.cat(rows), len(dataset))

    @staticmethod
    def distances(real, fake):
        """FID and KID of two feature sets, lower is better; every process gets the same."""
        real, fake = real.double(), fake.double()
        if real.device.type == 'mps':  # (no float64 there)
            real, fake = real.cpu(), fake.cpu()
        scores = dict(fid=frechet_distance(real, fake), **kernel_distance(real, fake))
        return {k: v.item() for k, v in scores.items()}

def frechet_distance(real, fake):
    """FID: the Frechet distance of the Gaussians fitted to the features,
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), with symmetric square roots."""
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    return (real.mean(0) - fake.mean(0)).square().sum() + s1.trace() + s2.trace() - 2 * cross

def kernel_distance(real, fake, subsets=100, size=1000):
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3,
    its mean and standard deviation over `subsets` random subsets of up to `size` of each, drawn
    from a seed of their own (as torchmetrics draws them): the same features give the same KID,
    and the training's random stream is untouched. Under torchrun each process takes its share
    of the subsets, and one all-reduce gives every process all of them."""
    rank, world = 0, 1
    if torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    m = min(size, len(real), len(fake))
    kernel = lambda a, b: (a @ b.T / real.shape[1] + 1) ** 3
    generator = torch.Generator().manual_seed(0)
    values = torch.zeros(subsets, dtype=real.dtype, device=real.device)
    for i in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m].to(real.device)]
        y = fake[torch.randperm(len(fake), generator=generator)[:m].to(real.device)]
        if i % world != rank:
            continue
        kxx, kyy = kernel(x, x), kernel(y, y)
        within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
        values[i] = within / (m * (m - 1)) - 2 * kernel(x, y).sum() / m ** 2
    if world > 1:
        torch.distributed.all_reduce(values)
    return dict(kid=values.mean(), kid_std=values.std(unbiased=False))

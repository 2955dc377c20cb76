"""Data for both scripts: image folders, the official transforms, the sampler, built-in tasks."""
import os, random
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.tif', '.tiff')

class DataError(Exception):
    """A problem with the user's data: reported as one line, never as a traceback."""

# -----------------------------------------------------------------------------
# image files

def find_images(folder):
    """The image files under folder, sorted: recursive, any case, regular files (not a FIFO)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder")
    paths = []
    for d, _, files in os.walk(folder):
        paths += [os.path.join(d, f) for f in files if f.lower().endswith(IMG_EXTENSIONS)]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMG_EXTENSIONS)}) in this folder")
    return sorted(paths)

def unit_range(img, path):
    """In [0, 1]: integers by 65535 (a dark file keeps the others' scale), floats by their range."""
    values = np.asarray(img, dtype=np.float64)
    for top in (1.0, 255.0, 65535.0) if img.mode == 'F' else (65535.0,):
        if values.min() >= 0 and values.max() <= top:
            return values / top
    low, high = values.min() + 0.0, values.max() + 0.0  # (+ 0.0: no '-0')
    raise DataError(f"{path}: pixel values from {low:g} to {high:g}, outside 0..65535; convert "
                    f"the image to 8 or 16 bits")

def load_image(path, channels=3):
    """Upright as viewers show it (EXIF): 8-bit RGB; channels=1: 8-bit gray or floats in [0, 1]."""
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here and not deep inside a transform
        img = ImageOps.exif_transpose(img)
    except Exception as e:
        raise DataError(f"{path}: cannot read image ({e}); fix or remove the file") from None
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        values = unit_range(img, path)
        if channels == 1:
            return Image.fromarray(values.astype(np.float32), mode='F')
        img = Image.fromarray((values * 255).round().astype(np.uint8))
    if img.mode in ('P', 'PA', 'LA'):
        img = img.convert('RGBA')  # palette transparency would otherwise warn
    if channels == 1:
        return img.convert('L')
    return img.convert('RGB')  # RGBA loses its alpha; CMYK and L are converted

# -----------------------------------------------------------------------------
# transforms (the official preprocessing, one random draw shared by all images of an item)

class Transform:
    """Resize (bicubic) or scale_width, random crop, random flip, to a [-1, 1] tensor; train=False:
    no randomness, sized to crop_size. min_side: the networks' smallest, where nothing crops."""
    def __init__(self, preprocess='resize_and_crop', load_size=286, crop_size=256, flip=True,
                 train=True, min_side=1):
        self.preprocess = preprocess
        self.load = load_size
        self.crop = crop_size
        self.flip = flip
        self.train = train
        self.min_side = min_side
        if train and preprocess == 'resize_and_crop' and crop_size > load_size:
            raise DataError(f"--crop_size {crop_size} is larger than --load_size {load_size}")

    def resized(self, w, h):
        size = self.load if self.train else self.crop
        if self.preprocess == 'resize_and_crop':
            return size, size
        if self.preprocess.startswith('scale_width'):  # multiples of 4 for the networks
            height = max(4, round(h * size / w / 4) * 4)
            if self.preprocess == 'scale_width':  # uncropped: the width too
                return max(4, round(size / 4) * 4), height
            return size, height
        if self.preprocess == 'none':  # the networks need multiples of 4
            return max(4, round(w / 4) * 4), max(4, round(h / 4) * 4)
        return w, h

    def check(self, paths, split=1):
        """Every header read at start-up: a broken or too-small image (split=2: half) fails now."""
        for p in paths:
            try:
                with Image.open(p) as img:
                    w, h = img.size
                    header_exif = img.format in ('JPEG', 'MPO', 'TIFF')  # (a PNG's: after pixels)
                    if header_exif and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned 90
                        w, h = h, w
            except Exception as e:
                raise DataError(f"{p}: cannot read image ({e}); fix or remove the file") from None
            w, h = self.resized(w // split, h)
            if self.train and 'crop' in self.preprocess and (w < self.crop or h < self.crop):
                raise DataError(f"{p}: image is {w}x{h} after resizing, smaller than --crop_size "
                                f"{self.crop}; lower it or use --preprocess resize_and_crop")
            if 'crop' not in self.preprocess and min(w, h) < self.min_side:
                raise DataError(f"{p}: image is {w}x{h} after resizing, smaller than the networks' "
                                f"{self.min_side}; remove it or use --preprocess resize_and_crop")

    def __call__(self, imgs, rng):
        w, h = self.resized(*imgs[0].size)
        if (w, h) != imgs[0].size:
            imgs = [im.resize((w, h), Image.BICUBIC) for im in imgs]
        if 'crop' in self.preprocess:
            c = self.crop
            top, left = (h - c) // 2, (w - c) // 2
            if self.train:
                top, left = rng.randint(0, h - c), rng.randint(0, w - c)
            imgs = [im.crop((left, top, left + c, top + c)) for im in imgs]
        if self.train and self.flip and rng.random() < 0.5:
            imgs = [TF.hflip(im) for im in imgs]
        return [TF.to_tensor(im) * 2 - 1 for im in imgs]  # 8-bit: / 255; float ('F'): as it is

# -----------------------------------------------------------------------------
# datasets. Items are asked for as (epoch, index) (an index alone: epoch 0); their random choices
# come from (seed, epoch, index): the same with any loader workers, processes, or resumes.

class UnpairedFolders(torch.utils.data.Dataset):
    """<root>/<phase>A and B (swapped with BtoA): max(|A|, |B|) items, B at random unless serial."""
    def __init__(self, root, phase, transform, direction='AtoB', serial=False, max_size=None,
                 seed=0, channels=(3, 3)):
        a, b = ('B', 'A') if direction == 'BtoA' else ('A', 'B')
        self.A = find_images(os.path.join(root, phase + a))[:max_size]
        self.B = find_images(os.path.join(root, phase + b))[:max_size]
        transform.check(self.A)
        transform.check(self.B)
        self.transform = transform
        self.serial = serial
        self.seed = seed
        self.channels = channels  # of A and of B: 1 (grayscale) or 3 (RGB)

    def __len__(self):
        return max(len(self.A), len(self.B))

    def domain(self, key):  # each image of domain key once (serial: in order), with a partner
        return torch.utils.data.Subset(self, range(len(getattr(self, key))))

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (0, item)
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        b = i % len(self.B) if self.serial else rng.randrange(len(self.B))
        path_A, path_B = self.A[i % len(self.A)], self.B[b]
        A = self.transform([load_image(path_A, self.channels[0])], rng)[0]
        B = self.transform([load_image(path_B, self.channels[1])], rng)[0]
        return {'A': A, 'B': B}

class PairedFolders(torch.utils.data.Dataset):
    """Aligned pairs, cropped and flipped alike: side-by-side files <root>/<phase>/x.jpg (A left,
    B right), or <root>/A/<phase>/x.png and <root>/B/<phase>/x.png matched by name."""
    def __init__(self, root, phase, transform, direction='AtoB', max_size=None, seed=0,
                 channels=(3, 3)):
        dirA, dirB = os.path.join(root, 'A', phase), os.path.join(root, 'B', phase)
        self.side_by_side = not os.path.isdir(dirA)
        if self.side_by_side:
            self.A = self.B = find_images(os.path.join(root, phase))[:max_size]
            transform.check(self.A, split=2)
        else:
            self.A = find_images(dirA)[:max_size]
            by_name = {os.path.splitext(os.path.relpath(p, dirB))[0]: p for p in find_images(dirB)}
            names = [os.path.splitext(os.path.relpath(p, dirA))[0] for p in self.A]
            for p, name in zip(self.A, names):
                if name not in by_name:
                    raise DataError(f"{p}: no image of the same name in {dirB}")
            self.B = [by_name[name] for name in names]
            transform.check(self.A)
            transform.check(self.B)
        self.transform = transform
        self.swap = direction == 'BtoA'
        self.seed = seed
        self.channels = channels  # of the input and of the target (after the swap)

    def __len__(self):
        return len(self.A)

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (0, item)
        nc_a, nc_b = self.channels[::-1] if self.swap else self.channels  # of the files' A and B
        if self.side_by_side:  # an odd width loses its last column: both halves the same size
            ab = load_image(self.A[i], max(nc_a, nc_b))
            w, h = ab.size
            a, b = ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w // 2 * 2, h))
            a, b = a.convert(a.mode if nc_a == 3 else 'L'), b.convert(b.mode if nc_b == 3 else 'L')
        else:
            a, b = load_image(self.A[i], nc_a), load_image(self.B[i], nc_b)
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        A, B = self.transform([a, b], rng)
        if self.swap:
            return {'A': B, 'B': A}
        return {'A': A, 'B': B}

class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """DistributedSampler's shard as (epoch, index) items, from `start` on (to resume mid-epoch)."""
    start = 0

    def __iter__(self):
        return iter([(self.epoch, i) for i in super().__iter__()][self.start:])

    def __len__(self):
        return super().__len__() - self.start

def train_loader(dataset, batch_size, workers, seed, shuffle, rank=0, world=1):
    """This process's shard in batches; workers kept from epoch to epoch, at most one a CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    sampler = EpochSampler(dataset, world, rank, shuffle, seed)
    if len(sampler) < batch_size:
        raise DataError(f"{len(dataset)} training images make no batch of --batch_size "
                        f"{batch_size} on {world} process(es)")
    return torch.utils.data.DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=min(workers, cpus or 1),
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=True,
        generator=torch.Generator())  # its own RNG: the global one stays exact on resume

def start_epoch(loader, step, iters):
    """The batches of the epoch of iteration `step`, from that one on (iters: per epoch)."""
    loader.sampler.epoch = step // iters
    loader.sampler.start = step % iters * loader.batch_size
    return iter(loader)

def share_loader(dataset):
    """This process's share of a held-out dataset in batches of 16 (padded: gather() drops it)."""
    sampler = None
    if torch.distributed.is_initialized():
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    return torch.utils.data.DataLoader(dataset, 16, sampler=sampler, generator=torch.Generator())

def gather(rows, n):
    """The rows each process computed for its share, on every process, in the n items' order."""
    if not torch.distributed.is_initialized():
        return rows
    parts = [torch.empty_like(rows) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, rows)
    return torch.stack(parts, 1).flatten(0, 1)[:n]

# -----------------------------------------------------------------------------
# built-in synthetic data: no download, deterministic, with hidden ground truth for evaluation

SKY, GRASS = np.array([0.55, 0.75, 0.95]), np.array([0.35, 0.6, 0.25])
COATS = np.array([[0.55, 0.35, 0.2], [0.85, 0.8, 0.7], [0.45, 0.45, 0.45], [0.75, 0.55, 0.3]])

def render_scene(seed, size, striped):
    """Sky over grass with 1-3 'animals' (ellipses, boxes); striped: its zebra-striped twin."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    sky, grass = SKY + rng.normal(0, 0.05, 3), GRASS + rng.normal(0, 0.05, 3)
    is_sky = (y < rng.uniform(0.3, 0.6) * size)[..., None]  # above the horizon
    img = np.where(is_sky, sky, grass) * (1 - 0.2 * (y / size))[..., None]
    stripes = ((x + y) % 4 < 2)[..., None]
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        rx, ry = rng.uniform(0.2, 0.35, 2) * size
        if rng.random() < 0.5:
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        else:
            inside = (abs(x - cx) < rx * 0.8) & (abs(y - cy) < ry * 0.8)
        colour = np.clip(COATS[rng.integers(len(COATS))] + rng.normal(0, 0.04, 3), 0, 1)
        if striped:
            colour = np.where(stripes, 0.1 + colour * 0.1, colour)
        img = np.where(inside[..., None], colour, img)
    return torch.from_numpy(img.transpose(2, 0, 1)).float().clamp(0, 1) * 2 - 1

class Synthetic(torch.utils.data.Dataset):
    """paired=False: A = plain animals, B = striped ones, unrelated scenes in training, each test
    scene in both styles (the ground truth). paired=True: A = a degraded scene, B the clean one."""
    def __init__(self, size, paired, train=True, direction='AtoB', channels=(3, 3)):
        self.size = size
        self.paired = paired
        self.train = train
        self.swap = direction == 'BtoA'
        self.channels = channels  # of A and of B: 3, or 1 for the scenes in grayscale

    def __len__(self):
        return 1000 if self.train else 64

    def domain(self, key):  # (as UnpairedFolders.domain: each scene has both)
        return self

    def __getitem__(self, item):
        i = item[1] if isinstance(item, tuple) else item  # (no randomness: the epoch is unused)
        seed = i if self.train else 10**6 + i
        if self.paired:  # A: B at half resolution, its colours faded towards grey, with noise
            B = render_scene(seed, self.size, striped=seed % 2 == 1)
            blurred = F.interpolate(F.interpolate(B[None], scale_factor=0.5, mode='area'),
                                    scale_factor=2, mode='bilinear')[0]
            noise = torch.randn(B.shape, generator=torch.Generator().manual_seed(seed))
            A = (0.6 * blurred + 0.1 + 0.08 * noise).clamp(-1, 1)
        else:
            seed_B = seed + 10**5 if self.train else seed  # training: an unrelated scene
            A = render_scene(seed, self.size, False)
            B = render_scene(seed_B, self.size, True)
        if self.swap:
            A, B = B, A
        A, B = [x.mean(0, keepdim=True) if nc == 1 else x for x, nc in zip((A, B), self.channels)]
        return {'A': A, 'B': B}

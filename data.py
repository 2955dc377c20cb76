"""Data for cyclegan.py and pixelgan.py: image folders, the official transforms, a sampler that
shards and resumes, and the built-in synthetic datasets. Downloads: tools/download.py."""
import math, os, random
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
    """The image files under folder (recursive, any extension case), sorted; regular files only
    (a FIFO named like an image would never end a read); a clear error if none."""
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
    """A 16-bit, 32-bit or float image in [0, 1]. Integers by 65535 whatever their values, so that a
    dark file keeps the others' scale; floats by the range of their values (1, 255 or 65535)."""
    values = np.asarray(img, dtype=np.float64)
    tops = (1.0, 255.0, 65535.0) if img.mode == 'F' else (65535.0,)
    for top in tops:
        if values.min() >= 0 and values.max() <= top:
            return values / top
    low, high = values.min() + 0.0, values.max() + 0.0  # (+ 0.0: no '-0')
    raise DataError(f"{path}: pixel values from {low:g} to {high:g}, outside 0..65535; convert "
                    f"the image to 8 or 16 bits")

def load_image(path, channels=3):
    """Any supported file, upright as a viewer shows it (EXIF): 8-bit RGB for channels=3; for
    channels=1 8-bit gray, or floats in [0, 1] from 16-bit, 32-bit and float images."""
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

def check_images(paths, transform, split=1):
    """Every header read at start-up: a broken or too-small image stops the run before training
    (split=2: each half of side-by-side files; EXIF orientations 5 to 8 turn it 90 degrees)."""
    for p in paths:
        try:
            with Image.open(p) as img:
                w, h = img.size
                header_exif = img.format in ('JPEG', 'MPO', 'TIFF')  # a PNG's may follow the pixels
                if header_exif and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    w, h = h, w
        except Exception as e:
            raise DataError(f"{p}: cannot read image ({e}); fix or remove the file") from None
        transform.check_size(w // split, h, p)

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

    def check_size(self, w, h, path):
        w, h = self.resized(w, h)
        if self.train and 'crop' in self.preprocess and (w < self.crop or h < self.crop):
            raise DataError(f"{path}: image is {w}x{h} after resizing, smaller than --crop_size "
                            f"{self.crop}; lower --crop_size or use --preprocess resize_and_crop")
        if 'crop' not in self.preprocess and min(w, h) < self.min_side:
            raise DataError(f"{path}: image is {w}x{h} after resizing, smaller than the networks' "
                            f"{self.min_side}; remove it or use --preprocess resize_and_crop")

    def __call__(self, imgs, rng, path='image'):
        self.check_size(*imgs[0].size, path)  # (the start-up check may not have seen this file)
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
        tensors = [TF.to_tensor(im) for im in imgs]  # 8-bit: / 255; float ('F'): as it is
        return [TF.normalize(t, [0.5] * len(t), [0.5] * len(t)) for t in tensors]

# -----------------------------------------------------------------------------
# datasets. An item is asked for as (epoch, index), as the sampler gives it (an index alone: epoch
# 0); its random choices come from (seed, epoch, index): the same with any number of loader
# workers, persistent or not, processes, or resumes.

class UnpairedFolders(torch.utils.data.Dataset):
    """<root>/<phase>A and <root>/<phase>B (swapped with direction BtoA). An epoch is
    max(|A|, |B|) items; A in order, B at random (in order too with serial)."""
    def __init__(self, root, phase, transform, direction='AtoB', serial=False, max_size=None,
                 seed=0, channels=(3, 3)):
        a, b = ('B', 'A') if direction == 'BtoA' else ('A', 'B')
        self.A = find_images(os.path.join(root, phase + a))[:max_size]
        self.B = find_images(os.path.join(root, phase + b))[:max_size]
        check_images(self.A, transform)
        check_images(self.B, transform)
        self.transform = transform
        self.serial = serial
        self.seed = seed
        self.channels = channels  # of A and of B: 1 (grayscale) or 3 (RGB)

    def __len__(self):
        return max(len(self.A), len(self.B))

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (0, item)
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        b = i % len(self.B) if self.serial else rng.randrange(len(self.B))
        path_A, path_B = self.A[i % len(self.A)], self.B[b]
        A = self.transform([load_image(path_A, self.channels[0])], rng, path_A)[0]
        B = self.transform([load_image(path_B, self.channels[1])], rng, path_B)[0]
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
            check_images(self.A, transform, split=2)
        else:
            self.A = find_images(dirA)[:max_size]
            by_name = {os.path.splitext(os.path.relpath(p, dirB))[0]: p for p in find_images(dirB)}
            self.B = []
            for p in self.A:
                name = os.path.splitext(os.path.relpath(p, dirA))[0]
                if name not in by_name:
                    raise DataError(f"{p}: no image of the same name in {dirB}")
                self.B.append(by_name[name])
            check_images(self.A, transform)
            check_images(self.B, transform)
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
        A, B = self.transform([a, b], rng, self.A[i])
        if self.swap:
            return {'A': B, 'B': A}
        return {'A': A, 'B': B}

class Domain(torch.utils.data.Dataset):
    """{key: dataset[i][key]} for as many i as that domain has images (UnpairedFolders, serial)."""
    def __init__(self, dataset, key):
        self.dataset = dataset
        self.key = key
        self.size = len(getattr(dataset, key, dataset))

    def __len__(self):
        return self.size

    def __getitem__(self, item):
        return {self.key: self.dataset[item][self.key]}

class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) items: shuffled with a per-epoch seed, each of `world` processes its own
    equal-length shard (wrapping around to pad), from part-way into an epoch to resume exactly."""
    def __init__(self, n, seed, shuffle=True, rank=0, world=1):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.start = 0

    def __len__(self):
        return math.ceil(self.n / self.world) - self.start

    def __iter__(self):
        order = list(range(self.n))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        order += order[:math.ceil(self.n / self.world) * self.world - self.n]
        return iter((self.epoch, i) for i in order[self.rank::self.world][self.start:])

def train_loader(dataset, batch_size, workers, seed, shuffle, rank=0, world=1):
    """This process's shard in batches; workers kept from epoch to epoch, at most one a CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    workers = min(workers, cpus or 1)
    sampler = EpochSampler(len(dataset), seed, shuffle, rank, world)
    if len(sampler) < batch_size:
        raise DataError(f"{len(dataset)} training images make no batch of --batch_size "
                        f"{batch_size} on {world} process(es)")
    return torch.utils.data.DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(), drop_last=True,
        generator=torch.Generator())  # its own RNG: the global one stays exact on resume

def start_epoch(loader, step, iters):
    """The batches of the epoch that iteration `step` falls in, from that one on (iters: per
    epoch); the sampler gives each item its epoch, which draws its crops and flips."""
    loader.sampler.epoch = step // iters
    loader.sampler.start = step % iters * loader.batch_size
    return iter(loader)

def share_loader(dataset):
    """This process's share of a held-out dataset, in batches of 16: items rank, rank + world, ...
    (padded with the first ones where they do not divide evenly: gather() drops those)."""
    rank, world = 0, 1
    if torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sampler = EpochSampler(len(dataset), 0, shuffle=False, rank=rank, world=world)
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
COATS = np.array([[0.55, 0.35, 0.2], [0.85, 0.8, 0.7], [0.45, 0.45, 0.45],
                  [0.75, 0.55, 0.3]])  # horse colours

def render_scene(seed, size, striped):
    """A landscape (sky over grass) with 1-3 'animals' (ellipses and boxes in coat colours);
    striped=True: the same scene with zebra stripes on every animal, its other-domain twin."""
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

def degrade(clean, seed):
    """The 'low quality' version: half resolution, colour faded towards grey, noise."""
    half = F.interpolate(clean[None], scale_factor=0.5, mode='area')
    x = F.interpolate(half, scale_factor=2, mode='bilinear')[0]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return (0.6 * x + 0.1 + 0.08 * noise).clamp(-1, 1)

class Synthetic(torch.utils.data.Dataset):
    """paired=False: A = plain animals, B = striped ones, unrelated scenes in training, each test
    scene in both styles (the ground truth). paired=True: A = a degraded scene, B the clean one."""
    def __init__(self, size, paired, train=True, direction='AtoB', channels=(3, 3)):
        self.size = size
        self.paired = paired
        self.train = train
        self.n = 1000 if train else 64
        self.swap = direction == 'BtoA'
        self.channels = channels  # of A and of B: 3, or 1 for the scenes in grayscale

    def __len__(self):
        return self.n

    def __getitem__(self, item):
        i = item[1] if isinstance(item, tuple) else item  # (no randomness: the epoch is unused)
        seed = i if self.train else 10**6 + i
        if self.paired:
            B = render_scene(seed, self.size, striped=seed % 2 == 1)
            A = degrade(B, seed)
        else:
            seed_B = seed + 10**5 if self.train else seed  # training: an unrelated scene
            A = render_scene(seed, self.size, False)
            B = render_scene(seed_B, self.size, True)
        if self.swap:
            A, B = B, A
        A, B = [x.mean(0, keepdim=True) if nc == 1 else x for x, nc in zip((A, B), self.channels)]
        return {'A': A, 'B': B}

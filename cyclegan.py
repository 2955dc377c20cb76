"""CycleGAN in one file: unpaired image-to-image translation (Zhu et al., ICCV 2017, arXiv:1703.10593).

    python cyclegan.py                                   # built-in synthetic task, minutes on a CPU
    python cyclegan.py --dataroot datasets/horse2zebra   # the paper's recipe
    python cyclegan.py --resume                          # continue out/cyclegan/ckpt.pt
    python cyclegan.py --translate photos/ --ckpt out/cyclegan/ckpt.pt
    torchrun --standalone --nproc_per_node=8 cyclegan.py --dataroot ...

Read top to bottom: config, networks, losses, the training step, the loop, inference.
"""
import argparse, contextlib, functools, json, math, os, re, signal, sys, time
import torch
import torch.utils.flop_counter
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import data

# -----------------------------------------------------------------------------
# config: the official flags keep their names and defaults; the rest are marked "new"

def get_parser():
    p = argparse.ArgumentParser(description='CycleGAN: unpaired image-to-image translation')
    a = p.add_argument
    a('--dataroot', default=None, help='folder with trainA/trainB(/testA/testB); none: the built-in synthetic task')
    a('--netG', default='resnet_9blocks', choices=['resnet_9blocks', 'resnet_6blocks'])
    a('--netD', default='basic', choices=['basic', 'n_layers', 'pixel'], help='basic = 70x70 PatchGAN, pixel = 1x1')
    a('--n_layers_D', type=int, default=3, help='depth of the n_layers discriminator')
    a('--ngf', type=int, default=64, help='generator width (filters in the first conv)')
    a('--ndf', type=int, default=64, help='discriminator width')
    a('--norm', default='instance', choices=['instance', 'batch', 'syncbatch', 'none'])
    a('--init_type', default='normal', choices=['normal', 'xavier', 'kaiming', 'orthogonal'])
    a('--init_gain', type=float, default=0.02, help='std of the normal init (gain for xavier/orthogonal)')
    a('--gan_mode', default='lsgan', choices=['lsgan', 'vanilla', 'wgangp'])
    a('--lambda_A', type=float, default=10.0, help='weight of the cycle loss A -> B -> A')
    a('--lambda_B', type=float, default=10.0, help='weight of the cycle loss B -> A -> B')
    a('--lambda_identity', type=float, default=0.5, help='identity loss weight, relative to lambda_A/B')
    a('--pool_size', type=int, default=50, help='image replay buffer size; 0 disables it')
    a('--lr', type=float, default=0.0002)
    a('--beta1', type=float, default=0.5, help='Adam beta1')
    a('--n_epochs', type=int, default=100, help='epochs at the initial learning rate')
    a('--n_epochs_decay', type=int, default=100, help='epochs of linear decay to zero')
    a('--batch_size', type=int, default=1, help='per process')
    a('--load_size', type=int, default=286, help='resize images to this size ...')
    a('--crop_size', type=int, default=256, help='... then randomly crop to this size')
    a('--preprocess', default='resize_and_crop', choices=['resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop', 'none'])
    a('--no_flip', action='store_true', help='no random horizontal flips')
    a('--serial_batches', action='store_true', help='take images in order instead of shuffled')
    a('--direction', default='AtoB', choices=['AtoB', 'BtoA'], help='swap the domains (and, with --translate, which generator)')
    a('--num_threads', type=int, default=4, help='data loader worker processes')
    a('--max_dataset_size', type=int, default=None, help='use at most this many images per domain')
    a('--print_freq', type=int, default=100, help='iterations between progress lines')
    a('--display_freq', type=int, default=400, help='iterations between sample grids')
    a('--save_latest_freq', type=int, default=5000, help='iterations between checkpoints')
    a('--seed', type=int, default=0)
    a('--out_dir', default='out/cyclegan', help='new: checkpoint, samples and log.jsonl go here')
    a('--max_iters', type=int, default=None, help='new: stop after this many iterations')
    a('--eval_freq', type=int, default=1000, help='new: iterations between evaluations on held-out images')
    a('--resume', action='store_true', help='new: continue from --ckpt (default out_dir/ckpt.pt)')
    a('--ckpt', default=None, help='new: checkpoint or official generator .pth to resume from / translate with')
    a('--translate', default=None, metavar='PATH', help='new: translate an image or a folder and exit')
    a('--results_dir', default='results/cyclegan', help='new: where --translate writes')
    a('--export_official', default=None, metavar='DIR', help='new: write --ckpt as the official latest_net_*.pth files')
    a('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    a('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
      help='new: autocast precision of the networks; auto: bfloat16 where the hardware runs it fast')
    a('--compile', action='store_true', help='new: torch.compile the networks')
    a('--benchmark', action='store_true', help='new: time the training step on random tensors and exit')
    a('--tensorboard', action='store_true', help='new: also log to out_dir/tensorboard')
    return p

# Without --dataroot: a small preset that trains the synthetic task in minutes on 2 CPU cores.
# Flags given on the command line override it; with a dataroot the official defaults hold.
SYNTHETIC_PRESET = dict(netG='resnet_6blocks', ngf=32, ndf=32, crop_size=64, load_size=64, num_threads=0, n_epochs=1,
                        n_epochs_decay=1, print_freq=50, display_freq=250, eval_freq=500, save_latest_freq=500)
SCRIPT = 'cyclegan'
ARCH_FLAGS = ['netG', 'netD', 'n_layers_D', 'ngf', 'ndf', 'norm']  # these must match to resume

def parse_args(argv=None):
    """Returns the args and the flags that were given explicitly (they override preset and checkpoint)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    if args.dataroot is None and not args.resume and not args.benchmark:
        vars(args).update({k: v for k, v in SYNTHETIC_PRESET.items() if k not in given})
    return args, given

# -----------------------------------------------------------------------------
# networks (layouts and state_dict keys exactly as the official code, so its .pth files load)

def norm_layer(norm, channels):
    if norm == 'instance':
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels) if norm in ('batch', 'syncbatch') else nn.Identity()

class ReflectionPad2d(nn.ReflectionPad2d):
    """Pads in the input's own dtype. CPU autocast would run the padding in float32: a cast to float32 and
    back around every convolution, 3% slower and 15% more peak memory (measured at 256 px, bf16)."""
    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)

class ResnetBlock(nn.Module):
    def __init__(self, dim, norm, bias):
        super().__init__()
        self.conv_block = nn.Sequential(ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim),
                                        nn.ReLU(True), ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias),
                                        norm_layer(norm, dim))

    def forward(self, x):
        return x + self.conv_block(x)  # no ReLU after the sum

class ResnetGenerator(nn.Module):
    """c7s1-64, d128, d256, n_blocks x R256, u128, u64, c7s1-3 (the paper's appendix); tanh output."""
    def __init__(self, in_nc=3, out_nc=3, ngf=64, norm='instance', n_blocks=9):
        super().__init__()
        bias = norm == 'instance'  # as the official code: a bias only before instance norm
        layers = [ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, bias=bias), norm_layer(norm, ngf), nn.ReLU(True)]
        for i in range(2):  # downsample
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(norm, 2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, bias) for _ in range(n_blocks)]
        for i in range(2):  # upsample
            c = ngf * 4 // 2 ** i
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias), norm_layer(norm, c // 2), nn.ReLU(True)]
        layers += [ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 is the 70x70 'basic' D, n_layers=1 a 16x16 patch. Outputs logits."""
    def __init__(self, in_nc=3, ndf=64, n_layers=3, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        layers, c = [nn.Conv2d(in_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        for n in range(1, n_layers + 1):  # the last of these keeps stride 1
            c_next = ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(c, c_next, 4, 2 if n < n_layers else 1, 1, bias=bias), norm_layer(norm, c_next),
                       nn.LeakyReLU(0.2, True)]
            c = c_next
        layers += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class PixelDiscriminator(nn.Module):
    """1x1 PixelGAN: judges every pixel on its own (pix2pix, section 4.4)."""
    def __init__(self, in_nc=3, ndf=64, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        self.net = nn.Sequential(nn.Conv2d(in_nc, ndf, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ndf, 2 * ndf, 1, bias=bias),
                                 norm_layer(norm, 2 * ndf), nn.LeakyReLU(0.2, True), nn.Conv2d(2 * ndf, 1, 1, bias=bias))

    def forward(self, x):
        return self.net(x)

def init_weights(net, init_type='normal', gain=0.02):
    """Conv weights N(0, gain) (or xavier/kaiming/orthogonal), biases 0; batch norm weights N(1, gain)."""
    init = dict(normal=lambda w: nn.init.normal_(w, 0.0, gain), xavier=lambda w: nn.init.xavier_normal_(w, gain),
                kaiming=lambda w: nn.init.kaiming_normal_(w, a=0, mode='fan_in'), orthogonal=lambda w: nn.init.orthogonal_(w, gain))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            init[init_type](m.weight)
            m.bias is None or nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain); nn.init.zeros_(m.bias)
    return net

def build_generator(args):
    return init_weights(ResnetGenerator(3, 3, args.ngf, args.norm, 9 if args.netG == 'resnet_9blocks' else 6),
                        args.init_type, args.init_gain)

def build_discriminator(args):
    if args.netD == 'pixel':
        return init_weights(PixelDiscriminator(3, args.ndf, args.norm), args.init_type, args.init_gain)
    n_layers = 3 if args.netD == 'basic' else args.n_layers_D
    return init_weights(NLayerDiscriminator(3, args.ndf, n_layers, args.norm), args.init_type, args.init_gain)

# -----------------------------------------------------------------------------
# losses and the image pool

def gan_loss(pred, target_is_real, gan_mode):
    """The adversarial loss (paper Eq. 1): least squares by default (section 4), BCE for 'vanilla',
    the critic's mean for WGAN-GP. Always in float32."""
    pred = pred.float()
    if gan_mode == 'lsgan':
        return F.mse_loss(pred, torch.full_like(pred, float(target_is_real)))
    if gan_mode == 'vanilla':
        return F.binary_cross_entropy_with_logits(pred, torch.full_like(pred, float(target_is_real)))
    return -pred.mean() if target_is_real else pred.mean()

def gradient_penalty(D, real, fake, weight=10.0):
    """WGAN-GP (Gulrajani et al. 2017): push ||grad D|| to 1 on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mix).float().sum(), mix, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

class ImagePool:
    """Replay buffer of generated images (section 4, after Shrivastava et al.): once full, each
    query returns, with probability 1/2, a stored older image and stores the new one in its place."""
    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, images):
        if self.size == 0:  # --pool_size 0: the latest images only (detached: D's step must not reach G)
            return images.detach()
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img); out.append(img)
            elif torch.rand(1).item() < 0.5:
                j = torch.randint(self.size, (1,)).item()
                out.append(self.images[j]); self.images[j] = img
            else:
                out.append(img)
        return torch.stack(out)

def lr_factor(epoch, n_epochs, n_epochs_decay):
    """Learning rate multiplier after `epoch` completed epochs: constant, then linear decay (official rule)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)

# -----------------------------------------------------------------------------
# the training step. Both generators form one module (and both discriminators another) so that
# data parallelism sees one forward per backward: one per cycle for the generators, one in all for D.

class Generators(nn.Module):
    def __init__(self, G_A, G_B, batch_calls):
        super().__init__()
        self.G_A, self.G_B, self.batch_calls = G_A, G_B, batch_calls

    def forward(self, real, other, a_to_b):
        """One cycle (the paper's Fig. 3): with there, back = G_A, G_B if a_to_b else G_B, G_A, returns
        fake = there(real), rec = back(fake) and the identity image there(other). With instance norm (per-sample
        statistics) real and other can share one call exactly; batch norm would mix their statistics, so then
        each has its own."""
        there, back = (self.G_A, self.G_B) if a_to_b else (self.G_B, self.G_A)
        if self.batch_calls and real.shape == other.shape:  # (scale_width can give A and B other sizes)
            fake, idt = there(torch.cat([real, other])).chunk(2)
        else:
            fake, idt = there(real), there(other)
        return fake, back(fake), idt

class Discriminators(nn.Module):
    def __init__(self, D_A, D_B, batch_calls, gan_mode):
        super().__init__()
        self.D_A, self.D_B, self.batch_calls, self.gan_mode = D_A, D_B, batch_calls, gan_mode

    def loss(self, D, real, fake):
        one_call = self.batch_calls and real.shape == fake.shape
        pred_real, pred_fake = D(torch.cat([real, fake])).chunk(2) if one_call else (D(real), D(fake))
        loss = 0.5 * (gan_loss(pred_real, True, self.gan_mode) + gan_loss(pred_fake, False, self.gan_mode))
        return loss + gradient_penalty(D, real, fake) if self.gan_mode == 'wgangp' else loss

    def forward(self, real_A, real_B, fake_A, fake_B):
        """D_A tells real B from fake B, D_B real A from fake A (step 3 of the recipe)."""
        return self.loss(self.D_A, real_B, fake_B), self.loss(self.D_B, real_A, fake_A)

def unwrap(m):
    m = getattr(m, 'module', m)  # DistributedDataParallel
    return getattr(m, '_orig_mod', m)  # torch.compile

def train_step(G, D, opt_G, opt_D, pool_A, pool_B, real_A, real_B, args, autocast, scaler):
    """One iteration of the paper's full objective (Eq. 3): a generator step, then a discriminator step."""
    D_A, D_B = unwrap(D).D_A, unwrap(D).D_B
    real, lam, fake, loss = dict(A=real_A, B=real_B), dict(A=args.lambda_A, B=args.lambda_B), {}, {}
    # generator step: the discriminators are frozen, so only the generators get gradients. The objective
    # is a sum over the two cycles, so each cycle has its own backward: the same gradients, with one
    # cycle's activations in memory instead of two (measured: 23% less peak memory at 256 px).
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    for X, Y, D_X in (('A', 'B', D_A), ('B', 'A', D_B)):  # the cycle X -> Y -> X; G_X maps X to Y, D_X judges it
        first = X == 'A' and hasattr(G, 'no_sync')  # data parallel: all-reduce the gradients once, after both
        with G.no_sync() if first else contextlib.nullcontext():
            with autocast:
                fake[Y], rec, idt = G(real[X], real[Y], a_to_b=X == 'A')
                loss['G_' + X] = gan_loss(D_X(fake[Y]), True, args.gan_mode)  # Eq. 1: G_X fools D_X
                loss['cycle_' + X] = lam[X] * F.l1_loss(rec.float(), real[X])  # Eq. 2: back to the start
                # identity loss (section 5.2, 'photo generation from paintings'): G_X(y) should be y
                loss['idt_' + X] = args.lambda_identity * lam[Y] * F.l1_loss(idt.float(), real[Y])
            scaler.scale(loss['G_' + X] + loss['cycle_' + X] + loss['idt_' + X]).backward()
    scaler.step(opt_G)
    # discriminator step, on a history of generated images rather than only the latest ones
    D.requires_grad_(True)
    with autocast:
        loss['D_A'], loss['D_B'] = D(real_A, real_B, pool_A.query(fake['A']), pool_B.query(fake['B']))
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss['D_A'] + loss['D_B']).backward()
    scaler.step(opt_D)
    scaler.update()
    return {k: v.detach() for k, v in loss.items()}

# -----------------------------------------------------------------------------
# helpers: device, checkpoints, evaluation, samples

def save_checkpoint(ckpt, path):
    """Write to a temporary file, fsync, then rename: a crash at any moment leaves the old file intact."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        torch.save(ckpt, f); f.flush(); os.fsync(f.fileno())
    os.replace(tmp, path)

def load_file(path):
    """torch.load with weights_only=True: a file whose unpickling would run code is refused."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: no such checkpoint; give --ckpt FILE")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        sys.exit(f"error: {path}: not a loadable weights file, or one that would run code when loaded "
                 f"({str(e).splitlines()[0][:120]})")

def load_checkpoint(path):
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get('script') != SCRIPT:
        sys.exit(f"error: {path} is not a {SCRIPT}.py checkpoint" +
                 (f" but a {ckpt['script']}.py one" if isinstance(ckpt, dict) and 'script' in ckpt else ''))
    return ckpt

def generator_from_file(path, direction='AtoB'):
    """A generator from our checkpoint or from an official .pth state_dict (architecture inferred
    from its keys and shapes: number of residual blocks, width, batch vs instance norm)."""
    obj = load_file(path)
    if isinstance(obj, dict) and 'script' in obj:
        if obj['script'] != 'cyclegan':
            sys.exit(f"error: {path} is a {obj['script']}.py checkpoint; use {obj['script']}.py --translate")
        args = argparse.Namespace(**obj['args'])
        G = ResnetGenerator(3, 3, args.ngf, args.norm, 9 if args.netG == 'resnet_9blocks' else 6)
        G.load_state_dict(obj['G_A' if direction == args.direction else 'G_B'])  # G_A learnt the trained direction
        return G
    sd = {re.sub(r'^module\.', '', k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    w = sd.get('model.1.weight')
    if w is None or w.ndim != 4 or w.shape[-1] != 7:
        kind = ('a U-Net generator (pix2pix); use pixelgan.py' if 'model.model.0.weight' in sd else
                'a discriminator' if 'model.0.weight' in sd or 'net.0.weight' in sd else 'not a generator state_dict')
        sys.exit(f"error: {path}: {kind}; cyclegan.py --translate needs a ResNet generator")
    batch = any(v.ndim == 1 and k.endswith('.weight') for k, v in sd.items())  # affine norm weights
    n_blocks = len({k.split('.')[1] for k in sd if 'conv_block' in k})
    G = ResnetGenerator(w.shape[1], 3, w.shape[0], 'batch' if batch else 'instance', n_blocks)
    keys = G.state_dict().keys()  # old official files carry InstanceNorm running stats: drop them
    G.load_state_dict({k: v for k, v in sd.items() if k in keys or not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))})
    return G

def psnr(x, y):
    """Peak signal-to-noise ratio in dB of images in [-1, 1], per image."""
    return 10 * torch.log10(4 / ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-10))

def ssim(x, y, size=11, sigma=1.5):
    """Structural similarity (Wang et al. 2004), Gaussian window, on [0, 1] images, per image."""
    x, y = (x + 1) / 2, (y + 1) / 2
    g = torch.exp(-(torch.arange(size, device=x.device) - size // 2) ** 2 / (2 * sigma ** 2))
    win = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, size, size)
    blur = functools.partial(F.conv2d, weight=win, groups=x.shape[1])
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).flatten(1).mean(1)

@torch.no_grad()
def evaluate(G_A, G_B, loader, device, a='A', b='B'):
    """On held-out pairs with known ground truth: PSNR/SSIM of G_A(A) vs true B and G_B(B) vs true A,
    next to the identity baseline (the untranslated input vs the truth)."""
    G_A.eval(); G_B.eval()
    sums, n = {}, 0
    for batch in loader:
        A, B = batch[a].to(device), batch[b].to(device)
        fake_B, fake_A = G_A(A).float(), G_B(B).float()
        for name, v in [('psnr_AtoB', psnr(fake_B, B)), ('psnr_BtoA', psnr(fake_A, A)), ('psnr_identity', psnr(A, B)),
                        ('ssim_AtoB', ssim(fake_B, B)), ('ssim_BtoA', ssim(fake_A, A)), ('ssim_identity', ssim(A, B))]:
            sums[name] = sums.get(name, 0) + v.sum().item()
        n += len(A)
    G_A.train(); G_B.train()
    return {k: v / n for k, v in sums.items()}

@torch.no_grad()
def save_samples(G_A, G_B, A, B, path):
    """Two rows per sample: real_A | fake_B | rec_A over real_B | fake_A | rec_B."""
    G_A.eval(); G_B.eval()
    fake_B, fake_A = G_A(A), G_B(B)
    rows = [A, fake_B, G_B(fake_B), B, fake_A, G_A(fake_A)]
    G_A.train(); G_B.train()
    grid = torch.stack([r[i].float() for i in range(len(A)) for r in rows])
    torchvision.utils.save_image(grid * 0.5 + 0.5, path, nrow=3, padding=2)

# -----------------------------------------------------------------------------
# the training loop

def setup(args):
    """Device, distributed process group (under torchrun), seeds, autocast and the grad scaler."""
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)
    device = pick_device(args.device)
    if ddp:
        if device.type == 'cuda':
            device = torch.device('cuda', int(os.environ['LOCAL_RANK'])); torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    torch.manual_seed(args.seed)  # the same on every rank: identical initial weights
    if args.dtype == 'auto':  # bfloat16 on CUDA compute capability 8+ and on CPUs with AVX-512 BF16 or AMX
        cpu_flags = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
        fast = (torch.cuda.get_device_capability(device)[0] >= 8 if device.type == 'cuda' else
                device.type == 'cpu' and ('avx512_bf16' in cpu_flags or 'amx_bf16' in cpu_flags))
        args.dtype = 'bfloat16' if fast else 'float32'
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == 'cuda')
    return ddp, rank, world, device, autocast, scaler

def pick_device(name):
    return torch.device(name if name != 'auto' else 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu')

def resume_args(args, given, path):
    """The checkpoint's args with the flags given now on top; architecture flags must not change."""
    ckpt = load_checkpoint(path)
    diff = [f"--{k} {given[k]} (checkpoint: {ckpt['args'][k]})" for k in ARCH_FLAGS if k in given and given[k] != ckpt['args'][k]]
    if diff:
        sys.exit(f"error: cannot resume {path} with a different architecture: {', '.join(diff)}")
    return argparse.Namespace(**{**ckpt['args'], 'max_iters': None, **given}), ckpt  # max_iters: only if given again

def check_writable(folder, flag):
    """Fail now rather than at the first save, hours from now."""
    try:
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, '.write_test'), 'w').close(); os.remove(os.path.join(folder, '.write_test'))
    except OSError as e:
        sys.exit(f"error: {flag} {folder}: not writable ({e.strerror})")

def make_data(args, rank, world):
    """The training loader, and held-out images with evaluation transforms: a loader with ground
    truth (the synthetic task) and four fixed samples for the grids."""
    if args.dataroot is None:
        train_set, test_set = data.Synthetic(args.crop_size, paired=False), data.Synthetic(args.crop_size, paired=False, train=False)
    else:
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, not args.no_flip)
        train_set = data.UnpairedFolders(args.dataroot, 'train', tf, args.serial_batches, args.max_dataset_size, args.seed)
        phase = 'test' if os.path.isdir(os.path.join(args.dataroot, 'testA')) else 'train'
        test_set = data.UnpairedFolders(args.dataroot, phase, data.Transform('resize_and_crop', crop_size=args.crop_size,
                                        train=False), serial=True, max_size=4)  # square samples: one grid
    sampler = data.EpochSampler(len(train_set), args.seed, not args.serial_batches, rank, world)
    loader = torch.utils.data.DataLoader(train_set, args.batch_size, sampler=sampler, num_workers=args.num_threads,
                                         pin_memory=torch.cuda.is_available(), drop_last=True,
                                         generator=torch.Generator())  # its own RNG: the global one stays exact on resume
    fixed = next(iter(torch.utils.data.DataLoader(test_set, 4)))
    test_loader = torch.utils.data.DataLoader(test_set, 16) if args.dataroot is None else None
    return train_set, sampler, loader, test_loader, fixed

def train(args, given):
    ckpt_path = args.ckpt or os.path.join(args.out_dir, 'ckpt.pt')
    args, ckpt = resume_args(args, given, ckpt_path) if args.resume else (args, None)
    ddp, rank, world, device, autocast, scaler = setup(args)
    master = rank == 0  # only rank 0 prints, evaluates and writes
    if args.crop_size % 4:
        sys.exit(f"error: --crop_size {args.crop_size} must be a multiple of 4 for the ResNet generator")
    if master and not args.benchmark:
        check_writable(args.out_dir, '--out_dir')
        print(f"training on {args.dataroot or 'the built-in synthetic task (plain -> zebra-striped animals)'}" +
              (f", preset {json.dumps({k: vars(args)[k] for k in SYNTHETIC_PRESET})}" if args.dataroot is None else ''))
    train_set, sampler, loader, test_loader, fixed = make_data(args, rank, world)
    a, b = ('B', 'A') if args.direction == 'BtoA' else ('A', 'B')  # BtoA swaps the domains

    G_A, G_B, D_A, D_B = build_generator(args), build_generator(args), build_discriminator(args), build_discriminator(args)
    for name, net in [('G_A', G_A), ('G_B', G_B), ('D_A', D_A), ('D_B', D_B)]:
        master and print(f"{name} parameters: {sum(p.numel() for p in net.parameters())}")
    batch_calls = args.norm in ('instance', 'none')
    G, D = Generators(G_A, G_B, batch_calls).to(device), Discriminators(D_A, D_B, batch_calls, args.gan_mode).to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    pool_A, pool_B = ImagePool(args.pool_size), ImagePool(args.pool_size)
    state = dict(epoch=0, epoch_iter=0, step=0)
    if ckpt:  # everything needed to continue exactly: weights, optimizers, pools, position, RNG
        for k, obj in dict(G_A=G_A, G_B=G_B, D_A=D_A, D_B=D_B, opt_G=opt_G, opt_D=opt_D).items():
            obj.load_state_dict(ckpt[k])
        pool_A.images, pool_B.images = [x.to(device) for x in ckpt['pool_A']], [x.to(device) for x in ckpt['pool_B']]
        state = {k: ckpt[k] for k in state}
        state['epoch_iter'] = state['epoch_iter'] * ckpt['world_size'] // world  # another process count: same images seen
        torch.set_rng_state(ckpt['rng_cpu'])
        if device.type == 'cuda' and 'rng_cuda' in ckpt:
            torch.cuda.set_rng_state(ckpt['rng_cuda'])
        master and print(f"resumed {ckpt_path} at epoch {state['epoch'] + 1}, iteration {state['step']}")
    if args.norm == 'syncbatch' and ddp and device.type != 'cuda':
        sys.exit("error: --norm syncbatch needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); use --norm batch")
    if ddp:
        if args.norm == 'syncbatch':
            G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
        G, D = nn.parallel.DistributedDataParallel(G), nn.parallel.DistributedDataParallel(D)
    if args.benchmark:  # the configured step on random tensors: no data loading, no disk
        real_A, real_B = (torch.rand(args.batch_size, 3, args.crop_size, args.crop_size, device=device) * 2 - 1 for _ in 'AB')
        step_fn = lambda: train_step(G, D, opt_G, opt_D, pool_A, pool_B, real_A, real_B, args, autocast, scaler)
        with torch.utils.flop_counter.FlopCounterMode(display=False) as flops:  # eager, before torch.compile
            step_fn()
    if args.compile:
        G, D = torch.compile(G), torch.compile(D)
    if args.benchmark:
        return benchmark(args, step_fn, device, args.batch_size * world, flops.get_total_flops())

    def diverged(what):  # stop before anything broken reaches the checkpoint on disk
        sys.exit(f"error: the {what} became NaN or infinite at iteration {state['step']}; {ckpt_path} keeps the "
                 f"last good state. Try a lower --lr or --dtype float32")

    def save():
        if not all(torch.isfinite(p).all() for net in (G_A, G_B, D_A, D_B) for p in net.parameters()):
            diverged('weights')
        save_checkpoint(dict(script=SCRIPT, args=vars(args), **state, world_size=world, rng_cpu=torch.get_rng_state(),
                             G_A=G_A.state_dict(), G_B=G_B.state_dict(), D_A=D_A.state_dict(), D_B=D_B.state_dict(),
                             opt_G=opt_G.state_dict(), opt_D=opt_D.state_dict(), pool_A=[x.cpu() for x in pool_A.images],
                             pool_B=[x.cpu() for x in pool_B.images],
                             **({'rng_cuda': torch.cuda.get_rng_state()} if device.type == 'cuda' else {})), ckpt_path)

    tb = None
    if args.tensorboard and master:
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(os.path.join(args.out_dir, 'tensorboard'))
        except ImportError:
            print("--tensorboard: the tensorboard package is not installed (pip install tensorboard); logging to log.jsonl only")

    def log(record):
        with open(os.path.join(args.out_dir, 'log.jsonl'), 'a') as f:
            f.write(json.dumps(dict(step=state['step'], **record)) + '\n')
        for k, v in record.items():
            tb and tb.add_scalar(k, v, state['step'])
        tb and tb.flush()

    stop = []  # Ctrl-C or SIGTERM: finish the iteration, save, exit
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stop.append(s))
    iters_per_epoch = len(sampler) // args.batch_size  # what the loader yields (each process sees its shard)
    if iters_per_epoch == 0:
        sys.exit(f"error: {len(train_set)} training images make no batch of --batch_size {args.batch_size} on {world} process(es)")
    total = (args.n_epochs + args.n_epochs_decay) * iters_per_epoch
    total = min(total, args.max_iters or total)
    t0, t_last, step_last, data_time = time.time(), time.time(), state['step'], 0.0
    due = lambda freq: master and (state['step'] % freq == 0 or state['step'] == total)  # rank 0, every freq and at the end
    while state['step'] < total and not stop:
        for group in opt_G.param_groups + opt_D.param_groups:
            group['lr'] = args.lr * lr_factor(state['epoch'], args.n_epochs, args.n_epochs_decay)
        sampler.epoch = train_set.epoch = state['epoch']
        sampler.start = state['epoch_iter'] * args.batch_size
        try:
            t_fetch = time.time()
            for batch in loader:
                data_time += time.time() - t_fetch  # waiting for the loader: should stay near zero
                real_A, real_B = batch[a].to(device, non_blocking=True), batch[b].to(device, non_blocking=True)
                loss = train_step(G, D, opt_G, opt_D, pool_A, pool_B, real_A, real_B, args, autocast, scaler)
                state['step'] += 1; state['epoch_iter'] += 1
                step, losses = state['step'], {k: v.item() for k, v in loss.items()}
                finite = all(map(math.isfinite, losses.values()))
                if ddp:  # all processes stop at the same iteration, or the others would wait forever
                    flags = torch.tensor([not finite, bool(stop)], dtype=torch.float32, device=device)
                    torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX)
                    finite, stop[:] = not flags[0], stop or [None] * bool(flags[1])
                if not finite:
                    diverged(f"loss ({losses})")
                if due(args.print_freq):
                    ips, data_ms = (step - step_last) * args.batch_size * world / (time.time() - t_last), 1000 * data_time / (step - step_last)
                    print(f"epoch {state['epoch'] + 1} iter {step}/{total} | " + ' '.join(f"{k} {v:.3f}" for k, v in losses.items())
                          + f" | {ips:.1f} img/s, data {data_ms:.0f} ms/it | ETA {(total - step) / ips * args.batch_size * world / 60:.1f} min")
                    log(dict(epoch=state['epoch'] + 1, lr=opt_G.param_groups[0]['lr'], images_per_s=ips, data_ms_per_iter=data_ms, **losses))
                    t_last, step_last, data_time = time.time(), step, 0.0
                if due(args.display_freq):
                    save_samples(G_A, G_B, fixed[a].to(device), fixed[b].to(device), os.path.join(args.out_dir, f"samples_{step:07d}.png"))
                if test_loader and due(args.eval_freq):
                    scores = evaluate(G_A, G_B, test_loader, device, a, b)
                    print(f"eval at iter {step}: " + ' '.join(f"{k} {v:.3f}" for k, v in scores.items()))
                    log(scores)
                if due(args.save_latest_freq) or master and stop:
                    save()
                if step >= total or stop:
                    break
                t_fetch = time.time()
            else:
                state['epoch'], state['epoch_iter'] = state['epoch'] + 1, 0
        except data.DataError as e:  # a file broke mid-run: save (we are between iterations) and say which
            master and save()
            sys.exit(f"error: {str(e).strip().splitlines()[-1].removeprefix('data.DataError: ')}\n"
                     f"saved {ckpt_path} at iteration {state['step']}; fix or remove the file, then add --resume")
    if master:
        print(f"interrupted: saved {ckpt_path} at iteration {state['step']}; continue with: python {SCRIPT}.py --resume "
              f"--ckpt {ckpt_path}" if stop else f"done: {state['step']} iterations in {(time.time() - t0) / 60:.1f} min; "
              f"checkpoint {ckpt_path}")
    if ddp:
        torch.distributed.destroy_process_group()
    if stop:
        sys.exit(130)
    return G_A, G_B, D_A, D_B

# -----------------------------------------------------------------------------
# inference, export, benchmark

@torch.no_grad()
def translate(args):
    """Every image under args.translate through the generator, at its own size."""
    device = pick_device(args.device)
    G = generator_from_file(args.ckpt or os.path.join(args.out_dir, 'ckpt.pt'), args.direction).to(device).eval()
    paths = [args.translate] if os.path.isfile(args.translate) else data.find_images(args.translate)
    base = os.path.dirname(args.translate) if os.path.isfile(args.translate) else args.translate
    check_writable(args.results_dir, '--results_dir')
    rows = []
    for path in paths:
        x = torchvision.transforms.functional.to_tensor(data.load_image(path))[None].to(device) * 2 - 1
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4), mode='reflect')  # the generator needs multiples of 4
        y = G(x)[..., :h, :w]
        out = os.path.join(args.results_dir, os.path.splitext(os.path.relpath(path, base))[0] + '.png')
        os.makedirs(os.path.dirname(out), exist_ok=True)
        torchvision.utils.save_image(y * 0.5 + 0.5, out)
        rel = lambda p: os.path.relpath(os.path.abspath(p), os.path.abspath(args.results_dir))
        rows.append(f"<tr><td>{rel(path)}</td><td><img src='{rel(path)}'></td><td><img src='{rel(out)}'></td></tr>")
    with open(os.path.join(args.results_dir, 'index.html'), 'w') as f:
        f.write(f"<html><body><table><tr><th>file</th><th>input</th><th>output</th></tr>{''.join(rows)}</table></body></html>\n")
    print(f"translated {len(paths)} image(s) into {args.results_dir} (index.html shows them side by side)")

def export_official(args):
    """latest_net_{G,D}_{A,B}.pth: bare state_dicts, as the official test script loads them."""
    ckpt = load_checkpoint(args.ckpt or os.path.join(args.out_dir, 'ckpt.pt'))
    check_writable(args.export_official, '--export_official')
    for k in ('G_A', 'G_B', 'D_A', 'D_B'):
        save_checkpoint(ckpt[k], os.path.join(args.export_official, f"latest_net_{k}.pth"))
    print(f"wrote {args.export_official}/latest_net_[GD]_[AB].pth")

PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12}  # dense bf16 FLOP/s, for the MFU

def benchmark(args, step_fn, device, n_images, flops):
    """Times step_fn (the configured training step on fixed random tensors) after three warm-up steps; the
    median over --max_iters steps (default 10), as the official figures in the README. Prints one figure
    per line, then all of them as one JSON object."""
    import resource, statistics
    sync, times = torch.cuda.synchronize if device.type == 'cuda' else lambda: None, []
    for _ in range(3 + (args.max_iters or 10)):
        sync(); t = time.perf_counter()
        step_fn()
        sync(); times.append(time.perf_counter() - t)
    sec = statistics.median(times[3:])
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    result = dict(ms_per_iter=1000 * sec, images_per_s=n_images / sec, flops_per_iter=flops, flops_per_s=flops / sec,
                  peak_mem_mib=torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, mfu=peak and flops / sec / peak,
                  device=name, dtype=args.dtype)
    for k, v in result.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps(result))
    return result

if __name__ == '__main__':
    args, given = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, also in a log file
    try:
        translate(args) if args.translate else export_official(args) if args.export_official else train(args, given)
    except data.DataError as e:
        sys.exit(f"error: {e}")

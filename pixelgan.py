"""Paired image-to-image translation in one file: the pix2pix family with the 1x1 PixelGAN and the
PatchGAN discriminators (Isola et al., CVPR 2017, arXiv:1611.07004, section 4.4).

    python pixelgan.py                                               # built-in restoration task, minutes on a CPU
    python pixelgan.py --dataroot datasets/facades --direction BtoA  # labels -> photo, the paper's recipe
    python pixelgan.py --resume                                      # continue out/pixelgan/ckpt.pt
    python pixelgan.py --translate labels/ --ckpt out/pixelgan/ckpt.pt
    python pixelgan.py --eval_only --ckpt out/pixelgan/ckpt.pt --dataroot datasets/facades --direction BtoA

A generator G maps an input image A to its target B; a conditional discriminator judges (A, B) pairs,
and an L1 loss ties G(A) to the true B pixel by pixel. Read top to bottom: config, networks, losses,
the training step, the loop, inference.
"""
import argparse, contextlib, copy, functools, json, math, os, re, signal, sys, time
import torch
import torch.utils.flop_counter
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import data

# -----------------------------------------------------------------------------
# config: the official flags keep their names and defaults; the rest are marked "new"

def get_parser():
    p = argparse.ArgumentParser(description='pix2pix / PixelGAN: paired image-to-image translation')
    a = p.add_argument
    a('--dataroot', default=None, help='paired dataset (<root>/train/*.jpg side by side, or <root>/A/train + <root>/B/train); none: the built-in synthetic task')
    a('--netG', default='unet_256', choices=['unet_256', 'unet_128', 'resnet_9blocks', 'resnet_6blocks'])
    a('--netD', default='pixel', choices=['pixel', 'basic', 'n_layers'], help='pixel = 1x1 PixelGAN (measured best here, see README), basic = 70x70 PatchGAN')
    a('--n_layers_D', type=int, default=3, help='depth of the n_layers discriminator (1: 16x16 patches)')
    a('--ngf', type=int, default=64, help='generator width (filters in the first conv)')
    a('--ndf', type=int, default=64, help='discriminator width')
    a('--norm', default='batch', choices=['batch', 'syncbatch', 'instance', 'none'])
    a('--no_dropout', action='store_true', help='no dropout in the generator')
    a('--init_type', default='normal', choices=['normal', 'xavier', 'kaiming', 'orthogonal'])
    a('--init_gain', type=float, default=0.02, help='std of the normal init (gain for xavier/orthogonal)')
    a('--gan_mode', default='vanilla', choices=['vanilla', 'lsgan', 'wgangp'])
    a('--lambda_L1', type=float, default=100.0, help='weight of the L1 loss')
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
    a('--direction', default='AtoB', choices=['AtoB', 'BtoA'], help='AtoB maps the left/A image to the right/B one')
    a('--num_threads', type=int, default=4, help='data loader worker processes')
    a('--max_dataset_size', type=int, default=None, help='use at most this many training pairs')
    a('--print_freq', type=int, default=100, help='iterations between progress lines')
    a('--display_freq', type=int, default=400, help='iterations between sample grids')
    a('--save_latest_freq', type=int, default=5000, help='iterations between checkpoints')
    a('--seed', type=int, default=0)
    a('--out_dir', default='out/pixelgan', help='new: checkpoint, samples and log.jsonl go here')
    a('--max_iters', type=int, default=None, help='new: stop after this many iterations')
    a('--eval_freq', type=int, default=1000, help='new: iterations between evaluations on the test split')
    a('--eval_only', action='store_true', help='new: evaluate --ckpt on the test split and exit')
    a('--test_train_mode', action='store_true', help='new: keep dropout and batch statistics on at test time, as the paper does')
    a('--resume', action='store_true', help='new: continue from --ckpt (default out_dir/ckpt.pt)')
    a('--ckpt', default=None, help='new: checkpoint or official generator .pth to resume from / translate with')
    a('--translate', default=None, metavar='PATH', help='new: translate an image or a folder and exit')
    a('--results_dir', default='results/pixelgan', help='new: where --translate writes')
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
SYNTHETIC_PRESET = dict(netG='unet_128', ngf=32, ndf=32, crop_size=128, load_size=128, num_threads=0, n_epochs=2,
                        n_epochs_decay=2, print_freq=50, display_freq=250, eval_freq=500, save_latest_freq=500)
SCRIPT = 'pixelgan'
ARCH_FLAGS = ['netG', 'netD', 'n_layers_D', 'ngf', 'ndf', 'norm', 'no_dropout']  # these must match to resume
EVAL_FLAGS = ['direction', 'preprocess', 'load_size', 'crop_size']  # --eval_only takes these from the checkpoint

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
    """Pads in the input's own dtype: CPU autocast would cast to float32 and back around each convolution."""
    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)

class UnetBlock(nn.Module):
    """One level of the U-Net: downsample, the inner levels, upsample, and a skip connection that
    concatenates this level's input to its output. Built from the innermost level outwards."""
    def __init__(self, outer_nc, inner_nc, in_nc=None, inner=None, norm='batch', dropout=False):
        super().__init__()
        bias = norm == 'instance'
        down = nn.Conv2d(in_nc or outer_nc, inner_nc, 4, 2, 1, bias=bias)
        self.outermost = in_nc is not None
        if self.outermost:
            layers = [down, inner, nn.ReLU(True), nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1), nn.Tanh()]
        elif inner is None:  # innermost: no norm at the 1x1 bottleneck
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=bias),
                      norm_layer(norm, outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, norm_layer(norm, inner_nc), inner, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1, bias=bias), norm_layer(norm, outer_nc)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        # The in-place LeakyReLU that opens self.model also rewrites x, so the skip carries
        # LeakyReLU(x), exactly as in the official code (its weights expect that).
        return torch.cat([x, self.model(x)], 1)

class UnetGenerator(nn.Module):
    """U-Net with num_downs downsamplings (8 for 256x256 inputs): widths 64-128-256-512-512-..., dropout
    0.5 in the inner 512-wide levels (the generator's only noise source, section 3.2)."""
    def __init__(self, in_nc=3, out_nc=3, num_downs=8, ngf=64, norm='batch', dropout=True):
        super().__init__()
        block = UnetBlock(ngf * 8, ngf * 8, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, inner=block, norm=norm, dropout=dropout)
        for mult in (4, 2, 1):
            block = UnetBlock(ngf * mult, ngf * mult * 2, inner=block, norm=norm)
        self.model = UnetBlock(out_nc, ngf, in_nc=in_nc, inner=block, norm=norm)

    def forward(self, x):
        return self.model(x)

class ResnetBlock(nn.Module):
    def __init__(self, dim, norm, bias, dropout):
        super().__init__()
        self.conv_block = nn.Sequential(ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim),
                                        nn.ReLU(True), *([nn.Dropout(0.5)] if dropout else []), ReflectionPad2d(1),
                                        nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim))

    def forward(self, x):
        return x + self.conv_block(x)

class ResnetGenerator(nn.Module):
    """The CycleGAN generator (see cyclegan.py), offered here as the alternative to the U-Net."""
    def __init__(self, in_nc=3, out_nc=3, ngf=64, norm='batch', n_blocks=9, dropout=False):
        super().__init__()
        bias = norm == 'instance'
        layers = [ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, bias=bias), norm_layer(norm, ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(norm, 2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, bias, dropout) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 4 // 2 ** i
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias), norm_layer(norm, c // 2), nn.ReLU(True)]
        layers += [ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 judges 70x70 patches ('basic'), n_layers=1 16x16 patches. Outputs logits."""
    def __init__(self, in_nc=6, ndf=64, n_layers=3, norm='batch'):
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
    """1x1 PixelGAN: judges every pixel on its own. Per the paper it adds colourfulness, not sharpness."""
    def __init__(self, in_nc=6, ndf=64, norm='batch'):
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

def make_generator(netG, ngf, norm, dropout):
    if netG.startswith('unet'):
        return UnetGenerator(3, 3, 8 if netG == 'unet_256' else 7, ngf, norm, dropout)
    return ResnetGenerator(3, 3, ngf, norm, 9 if netG == 'resnet_9blocks' else 6, dropout)

def build_generator(args):
    return init_weights(make_generator(args.netG, args.ngf, args.norm, not args.no_dropout), args.init_type, args.init_gain)

def build_discriminator(args):
    """Conditional: it sees input and output concatenated along channels (3 + 3)."""
    if args.netD == 'pixel':
        return init_weights(PixelDiscriminator(6, args.ndf, args.norm), args.init_type, args.init_gain)
    n_layers = 3 if args.netD == 'basic' else args.n_layers_D
    return init_weights(NLayerDiscriminator(6, args.ndf, n_layers, args.norm), args.init_type, args.init_gain)

def size_multiple(netG):
    """Input sides must be multiples of this: 2**num_downs for a U-Net, 4 for the ResNet."""
    return {'unet_256': 256, 'unet_128': 128}.get(netG, 4)

# -----------------------------------------------------------------------------
# losses

def gan_loss(pred, target_is_real, gan_mode):
    """The conditional GAN loss (paper Eq. 1): BCE on logits by default ('vanilla'), least squares
    for 'lsgan', the critic's mean for WGAN-GP. Always in float32."""
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

def lr_factor(epoch, n_epochs, n_epochs_decay):
    """Learning rate multiplier after `epoch` completed epochs: constant, then linear decay (official rule)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)

# -----------------------------------------------------------------------------
# the training step

class DiscriminatorLoss(nn.Module):
    """D's loss as one module, so that data parallelism sees one forward per step."""
    def __init__(self, D, gan_mode, batch_calls):
        super().__init__()
        self.D, self.gan_mode, self.batch_calls = D, gan_mode, batch_calls

    def forward(self, real_A, real_B, fake_B):
        real, fake = torch.cat([real_A, real_B], 1), torch.cat([real_A, fake_B], 1)  # D sees (input, output)
        # per-sample norms allow one call on both; batch norm needs separate ones, as in the official code
        pred_real, pred_fake = self.D(torch.cat([real, fake])).chunk(2) if self.batch_calls else (self.D(real), self.D(fake))
        loss = 0.5 * (gan_loss(pred_fake, False, self.gan_mode) + gan_loss(pred_real, True, self.gan_mode))
        return loss + gradient_penalty(self.D, real, fake) if self.gan_mode == 'wgangp' else loss

def unwrap(m):
    m = getattr(m, 'module', m)  # DistributedDataParallel
    return getattr(m, '_orig_mod', m)  # torch.compile

def train_step(G, D_loss, opt_G, opt_D, real_A, real_B, args, autocast, scaler):
    """One iteration of the objective G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G) (paper Eq. 4):
    the discriminator step, then the generator step."""
    D = unwrap(D_loss).D
    with autocast:
        fake_B = G(real_A)
        loss_D = D_loss(real_A, real_B, fake_B.detach())  # Eq. 1, D's side: real pairs vs generated pairs
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_D).backward()
    scaler.step(opt_D)
    D.requires_grad_(False)  # the generator step leaves D untouched
    with autocast:
        loss_G = gan_loss(D(torch.cat([real_A, fake_B], 1)), True, args.gan_mode)  # Eq. 1, G's side: fool D
        loss_L1 = args.lambda_L1 * F.l1_loss(fake_B.float(), real_B)  # Eq. 3: stay close to the truth
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_G + loss_L1).backward()
    scaler.step(opt_G)
    scaler.update()
    D.requires_grad_(True)
    return {'G_GAN': loss_G.detach(), 'G_L1': loss_L1.detach(), 'D': loss_D.detach()}

# -----------------------------------------------------------------------------
# helpers: device, checkpoints, evaluation, samples

def pick_device(name):
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    return torch.device(name)

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

def generator_from_file(path, obj=None):
    """The generator from our checkpoint, or from an official .pth state_dict (U-Net depth, width and
    batch vs instance norm inferred from its keys and shapes). Returns (G, netG)."""
    obj = load_file(path) if obj is None else obj  # obj: the file's contents, if already loaded
    if isinstance(obj, dict) and 'script' in obj:
        if obj['script'] != 'pixelgan':
            sys.exit(f"error: {path} is a {obj['script']}.py checkpoint; use {obj['script']}.py --translate")
        a = obj['args']
        G = make_generator(a['netG'], a['ngf'], a['norm'], not a['no_dropout'])
        G.load_state_dict(obj['G'])
        return G, a['netG']
    sd = {re.sub(r'^module\.', '', k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    norm = 'batch' if any(v.ndim == 1 and k.endswith('.weight') for k, v in sd.items()) else 'instance'
    if 'model.model.0.weight' in sd:
        num_downs = max(k.split('.').count('model') for k in sd) - 1
        netG, G = f"unet_{2 ** num_downs}", UnetGenerator(3, 3, num_downs, sd['model.model.0.weight'].shape[0], norm)
    elif getattr(sd.get('model.1.weight'), 'shape', [0])[-1] == 7:
        n_blocks, dropout = len({k.split('.')[1] for k in sd if 'conv_block' in k}), 'model.10.conv_block.6.weight' in sd
        netG, G = f"resnet_{n_blocks}blocks", ResnetGenerator(3, 3, sd['model.1.weight'].shape[0], norm, n_blocks, dropout)
    else:
        kind = 'a discriminator' if 'model.0.weight' in sd or 'net.0.weight' in sd else 'not a generator state_dict'
        sys.exit(f"error: {path}: {kind}; pixelgan.py --translate needs a U-Net or ResNet generator")
    keys = G.state_dict().keys()  # old official files carry InstanceNorm running stats: drop them
    G.load_state_dict({k: v for k, v in sd.items() if k in keys or not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))})
    return G, netG

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

@contextlib.contextmanager
def test_mode(G, train_mode):
    """Yields the generator to test with: G in eval mode (deterministic: no dropout, running batch
    statistics), or with train_mode, as the paper does, a copy with dropout and batch statistics on.
    Either way G's training state, batch norm statistics and the RNG are left as they were."""
    was_training = G.training
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        yield copy.deepcopy(G).train() if train_mode else G.eval()
    G.train(was_training)

@torch.no_grad()
def evaluate(G, loader, device, train_mode=False):
    """Mean L1, PSNR and SSIM of G(A) against the true B, next to the untranslated input's."""
    sums, n = {}, 0
    with test_mode(G, train_mode) as G_test:
        for batch in loader:
            A, B = batch['A'].to(device), batch['B'].to(device)
            fake_B = G_test(A).float()
            for name, v in [('l1', (fake_B - B).abs().flatten(1).mean(1)), ('l1_input', (A - B).abs().flatten(1).mean(1)),
                            ('psnr', psnr(fake_B, B)), ('psnr_input', psnr(A, B)), ('ssim', ssim(fake_B, B)), ('ssim_input', ssim(A, B))]:
                sums[name] = sums.get(name, 0) + v.sum().item()
            n += len(A)
    return {k: v / n for k, v in sums.items()}

@torch.no_grad()
def save_samples(G, A, B, path, train_mode=False):
    """One row per sample: input | output | target."""
    with test_mode(G, train_mode) as G_test:
        rows = [A, G_test(A), B]
    torchvision.utils.save_image(torch.stack([r[i].float() for i in range(len(A)) for r in rows]) * 0.5 + 0.5, path, nrow=3)

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

def make_test_set(args):
    """Held-out pairs with evaluation transforms: <root>/test, else <root>/val (or A/test, A/val)."""
    if args.dataroot is None:
        return data.Synthetic(args.crop_size, paired=True, train=False, direction=args.direction)
    for phase in ('test', 'val'):
        if any(os.path.isdir(os.path.join(args.dataroot, *p)) for p in [(phase,), ('A', phase)]):
            tf = data.Transform(args.preprocess, args.load_size, args.crop_size, train=False)
            return data.PairedFolders(args.dataroot, phase, tf, args.direction)
    return None

def train(args, given):
    ckpt_path = args.ckpt or os.path.join(args.out_dir, 'ckpt.pt')
    args, ckpt = resume_args(args, given, ckpt_path) if args.resume else (args, None)
    ddp, rank, world, device, autocast, scaler = setup(args)
    master = rank == 0  # only rank 0 prints, evaluates and writes
    if args.crop_size % size_multiple(args.netG):
        sys.exit(f"error: --crop_size {args.crop_size} must be a multiple of {size_multiple(args.netG)} for --netG {args.netG}")
    if args.netG.startswith('unet') and 'crop' not in args.preprocess:
        sys.exit(f"error: --preprocess {args.preprocess} gives images of any size; --netG {args.netG} needs a crop "
                 f"(--preprocess resize_and_crop, crop or scale_width_and_crop)")
    if master and not args.benchmark:
        check_writable(args.out_dir, '--out_dir')
        print(f"training on {args.dataroot or 'the built-in synthetic task (restore degraded images)'}" +
              (f", preset {json.dumps({k: vars(args)[k] for k in SYNTHETIC_PRESET})}" if args.dataroot is None else ''))
    if args.dataroot is None:
        train_set = data.Synthetic(args.crop_size, paired=True, direction=args.direction)
    else:
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, not args.no_flip)
        train_set = data.PairedFolders(args.dataroot, 'train', tf, args.direction, args.max_dataset_size, args.seed)
    sampler = data.EpochSampler(len(train_set), args.seed, not args.serial_batches, rank, world)
    loader = torch.utils.data.DataLoader(train_set, args.batch_size, sampler=sampler, num_workers=args.num_threads,
                                         pin_memory=torch.cuda.is_available(), drop_last=True,
                                         generator=torch.Generator())  # its own RNG: the global one stays exact on resume
    test_set = make_test_set(args)
    same_size = args.dataroot is None or 'crop' in args.preprocess  # else images differ in size: one at a time
    test_loader = torch.utils.data.DataLoader(test_set, 16 if same_size else 1) if test_set else None
    fixed = next(iter(torch.utils.data.DataLoader(test_set or train_set, 4 if same_size else 1)))  # shown in the grids

    # channels_last (NHWC) runs the discriminators faster; the U-Net was faster without it, its large weights
    # being cheaper for fused Adam in the plain layout (measured: see README, Performance)
    G, D = build_generator(args).to(device), build_discriminator(args).to(device, memory_format=torch.channels_last)
    for name, net in [('G', G), ('D', D)]:
        master and print(f"{name} parameters: {sum(p.numel() for p in net.parameters())}")
    D_loss = DiscriminatorLoss(D, args.gan_mode, args.norm in ('instance', 'none'))
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    state = dict(epoch=0, epoch_iter=0, step=0)
    if ckpt:  # everything needed to continue exactly: weights, optimizers, position, RNG
        for k, obj in dict(G=G, D=D, opt_G=opt_G, opt_D=opt_D).items():
            obj.load_state_dict(ckpt[k])
        state = {k: ckpt[k] for k in state}
        state['epoch_iter'] = state['epoch_iter'] * ckpt['world_size'] // world  # another process count: same images seen
        torch.set_rng_state(ckpt['rng_cpu'])
        if device.type == 'cuda' and 'rng_cuda' in ckpt:
            torch.cuda.set_rng_state(ckpt['rng_cuda'])
        master and print(f"resumed {ckpt_path} at epoch {state['epoch'] + 1}, iteration {state['step']}")
    G_train, D_train = G, D_loss  # what the step runs: wrapped for data parallelism, compiled
    if args.norm == 'syncbatch' and ddp and device.type != 'cuda':
        sys.exit("error: --norm syncbatch needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); use --norm batch")
    if ddp:
        if args.norm == 'syncbatch':
            G_train, D_train = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D_loss)
        G_train, D_train = nn.parallel.DistributedDataParallel(G_train), nn.parallel.DistributedDataParallel(D_train)
    if args.benchmark:  # the configured step on random tensors: no data loading, no disk
        real_A, real_B = (torch.rand(args.batch_size, 3, args.crop_size, args.crop_size, device=device) * 2 - 1 for _ in 'AB')
        step_fn = lambda: train_step(G_train, D_train, opt_G, opt_D, real_A, real_B, args, autocast, scaler)
        with torch.utils.flop_counter.FlopCounterMode(display=False) as flops:  # eager, before torch.compile
            step_fn()
    if args.compile:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    if args.benchmark:
        return benchmark(args, step_fn, device, args.batch_size * world, flops.get_total_flops())

    def diverged(what):  # stop before anything broken reaches the checkpoint on disk
        sys.exit(f"error: the {what} became NaN or infinite at iteration {state['step']}; {ckpt_path} keeps the "
                 f"last good state. Try a lower --lr or --dtype float32")

    def save():
        if not all(torch.isfinite(p).all() for net in (G, D) for p in net.parameters()):
            diverged('weights')
        save_checkpoint(dict(script=SCRIPT, args=vars(args), **state, world_size=world, rng_cpu=torch.get_rng_state(),
                             G=G.state_dict(), D=D.state_dict(), opt_G=opt_G.state_dict(), opt_D=opt_D.state_dict(),
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
                real_A, real_B = (batch[k].to(device, non_blocking=True) for k in 'AB')
                loss = train_step(G_train, D_train, opt_G, opt_D, real_A, real_B, args, autocast, scaler)
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
                    save_samples(G, fixed['A'].to(device), fixed['B'].to(device), os.path.join(args.out_dir, f"samples_{step:07d}.png"),
                                 args.test_train_mode)
                if test_loader and due(args.eval_freq):
                    scores = evaluate(G, test_loader, device, args.test_train_mode)
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
    return G, D

# -----------------------------------------------------------------------------
# inference, evaluation only, export

@torch.no_grad()
def translate(args, given=None):
    """Every image under args.translate through the generator, at its own size."""
    device = pick_device(args.device)
    G, netG = generator_from_file(args.ckpt or os.path.join(args.out_dir, 'ckpt.pt'))
    G.to(device).train(args.test_train_mode)
    paths = [args.translate] if os.path.isfile(args.translate) else data.find_images(args.translate)
    base = os.path.dirname(args.translate) if os.path.isfile(args.translate) else args.translate
    check_writable(args.results_dir, '--results_dir')
    rows, m = [], size_multiple(netG)
    for path in paths:
        x = torchvision.transforms.functional.to_tensor(data.load_image(path))[None].to(device) * 2 - 1
        h, w = x.shape[-2:]
        ph, pw = -h % m, -w % m  # pad up to the multiple the generator needs, then crop back
        x = F.pad(x, (0, pw, 0, ph), mode='reflect' if ph < h and pw < w else 'replicate')
        y = G(x)[..., :h, :w]
        out = os.path.join(args.results_dir, os.path.splitext(os.path.relpath(path, base))[0] + '.png')
        os.makedirs(os.path.dirname(out), exist_ok=True)
        torchvision.utils.save_image(y * 0.5 + 0.5, out)
        rel = lambda p: os.path.relpath(os.path.abspath(p), os.path.abspath(args.results_dir))
        rows.append(f"<tr><td>{rel(path)}</td><td><img src='{rel(path)}'></td><td><img src='{rel(out)}'></td></tr>")
    with open(os.path.join(args.results_dir, 'index.html'), 'w') as f:
        f.write(f"<html><body><table><tr><th>file</th><th>input</th><th>output</th></tr>{''.join(rows)}</table></body></html>\n")
    print(f"translated {len(paths)} image(s) into {args.results_dir} (index.html shows them side by side)")

def eval_only(args, given):
    """The evaluation alone; with our checkpoint, its direction and sizes unless given now."""
    device = pick_device(args.device)
    path = args.ckpt or os.path.join(args.out_dir, 'ckpt.pt')
    saved = load_file(path)
    G, _ = generator_from_file(path, saved)
    if isinstance(saved, dict) and saved.get('script') == SCRIPT:
        args = argparse.Namespace(**{**vars(args), **{k: saved['args'][k] for k in EVAL_FLAGS}, **given})
    test_set = make_test_set(args)
    if test_set is None:
        sys.exit(f"error: {args.dataroot}: no test or val split (test/, val/, A/test or A/val)")
    scores = evaluate(G.to(device), torch.utils.data.DataLoader(test_set, 16), device, args.test_train_mode)
    print(' '.join(f"{k} {v:.4f}" for k, v in scores.items()))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'log.jsonl'), 'a') as f:
        f.write(json.dumps(dict(eval_only=args.ckpt, **scores)) + '\n')

def export_official(args, given=None):
    """latest_net_G.pth / latest_net_D.pth: bare state_dicts, as the official test script loads them."""
    ckpt = load_checkpoint(args.ckpt or os.path.join(args.out_dir, 'ckpt.pt'))
    check_writable(args.export_official, '--export_official')
    for k in ('G', 'D'):
        save_checkpoint(ckpt[k], os.path.join(args.export_official, f"latest_net_{k}.pth"))
    print(f"wrote {args.export_official}/latest_net_G.pth and latest_net_D.pth")

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
        (translate if args.translate else eval_only if args.eval_only else export_official if args.export_official
         else train)(args, given)
    except data.DataError as e:
        sys.exit(f"error: {e}")

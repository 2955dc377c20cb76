"""Paired image-to-image translation in one file: the pix2pix family with the 1x1 PixelGAN and the
PatchGAN discriminators (Isola et al., CVPR 2017, arXiv:1611.07004, section 4.4).

    python pixelgan.py                             # built-in restoration task, minutes on a CPU
    python pixelgan.py --dataroot datasets/facades --direction BtoA  # labels -> photo
    python pixelgan.py --resume                    # continue out/pixelgan/ckpt.pt
    python pixelgan.py --translate labels/ --ckpt out/pixelgan/ckpt.pt
    torchrun --standalone --nproc_per_node=8 pixelgan.py --dataroot ...

A generator G maps an input image A to its target B. A conditional discriminator D judges
(A, B) pairs: real ones, and ones whose B is G(A). An L1 loss ties G(A) to the true B pixel by
pixel.

Read top to bottom: config, networks, losses, the training step, the training loop, inference.
The side jobs (export, FID/KID, benchmark, downloads) are in tools/.
"""
import argparse, contextlib, copy, functools, json, math, os, re, signal, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
import data

# -----------------------------------------------------------------------------
# config: the official flags keep their names and defaults; the rest are marked "new"

class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a wrong flag or value is one line (the error), not the usage text too."""
    def error(self, message):
        sys.exit(f"error: {message}; --help lists the flags")

class Range:
    """An argparse type: a number of `kind` from low (above it with open_low) to below high;
    never NaN or infinite."""
    def __init__(self, kind, low, high=math.inf, open_low=False):
        self.__name__ = kind.__name__  # argparse names it in "invalid int value: '1.5'"
        self.kind, self.low, self.high, self.open_low = kind, low, high, open_low
        self.bound = f"{'above' if open_low else 'at least'} {low}"
        if high < math.inf:
            self.bound += f" and below {high}"

    def __call__(self, text):
        value = self.kind(text)
        if not self.low <= value < self.high or (self.open_low and value == self.low):
            raise argparse.ArgumentTypeError(f"must be {self.bound}, not {text}")
        return value

COUNT, NATURAL = Range(int, 0), Range(int, 1)
WEIGHT, POSITIVE = Range(float, 0.0), Range(float, 0.0, open_low=True)

def get_parser():
    p = ArgumentParser(description='pix2pix / PixelGAN: paired image-to-image translation')
    a = p.add_argument
    a('--dataroot', default=None,
      help='paired dataset (<root>/train/*.jpg side by side, or <root>/A/train and '
           '<root>/B/train); none: the built-in synthetic task')
    a('--netG', default='unet_256',
      choices=['unet_256', 'unet_128', 'resnet_9blocks', 'resnet_6blocks'])
    a('--netD', default='pixel', choices=['pixel', 'basic', 'n_layers'],
      help='pixel = 1x1 PixelGAN (measured best here, see README), basic = 70x70 PatchGAN')
    a('--n_layers_D', type=NATURAL, default=3,
      help='depth of the n_layers discriminator (1: 16x16 patches)')
    a('--input_nc', type=int, default=3, choices=[1, 3], help='input channels: 1 gray, 3 RGB')
    a('--output_nc', type=int, default=3, choices=[1, 3], help='output (target) channels')
    a('--ngf', type=NATURAL, default=64, help='generator width (filters in the first conv)')
    a('--ndf', type=NATURAL, default=64, help='discriminator width')
    a('--norm', default='batch', choices=['batch', 'syncbatch', 'instance', 'none'])
    a('--no_dropout', action='store_true', help='no dropout in the generator')
    a('--init_type', default='normal', choices=['normal', 'xavier', 'kaiming', 'orthogonal'])
    a('--init_gain', type=POSITIVE, default=0.02, help='std of the normal init (xavier: gain)')
    a('--gan_mode', default='vanilla', choices=['vanilla', 'lsgan', 'wgangp'])
    a('--lambda_L1', type=WEIGHT, default=100.0, help='weight of the L1 loss')
    a('--lr', type=POSITIVE, default=0.0002)
    a('--beta1', type=Range(float, 0.0, 1.0), default=0.5, help='Adam beta1')
    a('--n_epochs', type=COUNT, default=100, help='epochs at the initial learning rate')
    a('--n_epochs_decay', type=COUNT, default=100, help='epochs of linear decay to zero')
    a('--batch_size', type=NATURAL, default=1, help='per process')
    a('--load_size', type=NATURAL, default=286, help='resize images to this size ...')
    a('--crop_size', type=NATURAL, default=256, help='... then randomly crop to this size')
    a('--preprocess', default='resize_and_crop',
      choices=['resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop', 'none'])
    a('--no_flip', action='store_true', help='no random horizontal flips')
    a('--serial_batches', action='store_true', help='take images in order instead of shuffled')
    a('--direction', default='AtoB', choices=['AtoB', 'BtoA'],
      help='AtoB maps the left/A image to the right/B one')
    a('--num_threads', type=COUNT, default=4, help='data loader worker processes')
    a('--max_dataset_size', type=NATURAL, default=None, help='at most this many training pairs')
    a('--print_freq', type=NATURAL, default=100, help='iterations between progress lines')
    a('--display_freq', type=NATURAL, default=400, help='iterations between sample grids')
    a('--save_latest_freq', type=NATURAL, default=5000, help='iterations between checkpoints')
    a('--seed', type=int, default=0)
    a('--out_dir', default='out/pixelgan', help='new: checkpoint, samples and log.jsonl go here')
    a('--max_iters', type=COUNT, default=None, help='new: stop after this many iterations')
    a('--eval_freq', type=NATURAL, default=1000, help='new: iterations between evaluations')
    a('--fid_weights', default=os.environ.get('FID_WEIGHTS'), metavar='FILE',
      help='new: FID, KID and best.pt with these feature weights (tools/fid.py); $FID_WEIGHTS')
    a('--test_train_mode', action='store_true', help='new: test in train mode, as the paper')
    a('--resume', action='store_true', help='new: continue from --ckpt (default out_dir/ckpt.pt)')
    a('--ckpt', help='new: checkpoint to resume; it or an official generator .pth to translate')
    a('--translate', metavar='PATH', help='new: translate an image or a folder and exit')
    a('--results_dir', default='results/pixelgan', help='new: where --translate writes')
    a('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    a('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
      help='new: autocast precision of the networks; auto: bfloat16 where the hardware is fast')
    a('--compile', action='store_true', help='new: torch.compile the networks')
    return p

# Without --dataroot: a small preset that trains the synthetic task in minutes on 2 CPU cores.
# Flags given on the command line override it; with a dataroot the official defaults hold.
SYNTHETIC_PRESET = dict(netG='unet_128', ngf=32, ndf=32, crop_size=128, load_size=128,
                        num_threads=0, n_epochs=2, n_epochs_decay=2, print_freq=50,
                        display_freq=250, eval_freq=500, save_latest_freq=500)
SYNTHETIC_TASK = 'the built-in synthetic task (restore degraded images)'
SCRIPT = 'pixelgan'
NETWORKS = ['G', 'D']  # their names in the checkpoint and the official files
STATE = [*NETWORKS, 'opt_G', 'opt_D']  # what a checkpoint holds to resume
ARCH_FLAGS = ['netG', 'netD', 'n_layers_D', 'ngf', 'ndf', 'norm', 'no_dropout', 'input_nc',
              'output_nc']
MOVED = {'--benchmark': 'python tools/bench.py SCRIPT [flags]',
         '--export': 'python tools/export.py --ckpt FILE --out G.pt2 (or G.onnx)',
         '--export_official': 'python tools/export.py --ckpt FILE --out DIR',
         '--eval_only': 'python tools/evaluate.py --ckpt FILE',
         '--tensorboard': 'python tools/to_tensorboard.py OUT_DIR'}

def parse_args(argv=None):
    """Returns the args and the flags given explicitly (they override preset and checkpoint)."""
    for word in sys.argv[1:] if argv is None else argv:
        if word.split('=')[0] in MOVED:
            sys.exit(f"error: {word.split('=')[0]} is now a tool of its own: "
                     f"{MOVED[word.split('=')[0]].replace('SCRIPT', SCRIPT)}")
    parser = get_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:  # a second parse without defaults: only what was typed
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    if args.dataroot is None and not args.resume:
        vars(args).update({k: v for k, v in SYNTHETIC_PRESET.items() if k not in given})
    return args, given

# -----------------------------------------------------------------------------
# networks: layouts and state_dict keys exactly as the official code, so its .pth files load

def norm_layer(norm, channels):
    """Instance norm keeps no weights and no statistics, as in the official code."""
    if norm == 'instance':
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm in ('batch', 'syncbatch'):
        return nn.BatchNorm2d(channels)
    return nn.Identity()

class ReflectionPad2d(nn.ReflectionPad2d):
    """Pads in the input's own dtype: CPU autocast would pad in float32, a cast there and back
    around every convolution (3% slower, 15% more memory at 256 px in bfloat16)."""
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
            layers = [down, inner, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1), nn.Tanh()]
        elif inner is None:  # innermost: no norm at the 1x1 bottleneck
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=bias),
                      norm_layer(norm, outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, norm_layer(norm, inner_nc), inner,
                      nn.ReLU(True), nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1, bias=bias),
                      norm_layer(norm, outer_nc)]
            if dropout:
                layers += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        # The in-place LeakyReLU that opens self.model also rewrites x, so the skip carries
        # LeakyReLU(x), exactly as in the official code (its weights expect that).
        return torch.cat([x, self.model(x)], 1)

class UnetGenerator(nn.Module):
    """U-Net with num_downs downsamplings (8 for 256x256 inputs): widths 64-128-256-512-512-...,
    dropout 0.5 in the inner 512-wide levels (the generator's only noise, section 3.2)."""
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
    """Two 3x3 convolutions added to the input. With dropout (a pix2pix option) the second
    convolution moves from index 5 to 6, as in the official files."""
    def __init__(self, dim, norm, bias, dropout=False):
        super().__init__()
        layers = [ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim),
                  nn.ReLU(True)]
        if dropout:
            layers += [nn.Dropout(0.5)]
        layers += [ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)

class ResnetGenerator(nn.Module):
    """CycleGAN's generator: c7s1-64, d128, d256, n_blocks x R256, u128, u64, c7s1-3 (the
    paper's appendix), tanh output. Output size = input size, for sides that are multiples of 4."""
    def __init__(self, in_nc=3, out_nc=3, ngf=64, norm='instance', n_blocks=9, dropout=False):
        super().__init__()
        bias = norm == 'instance'  # as the official code: a bias only before instance norm
        layers = [ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, bias=bias), norm_layer(norm, ngf),
                  nn.ReLU(True)]
        for i in range(2):  # downsample
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(norm, 2 * c),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, bias, dropout) for _ in range(n_blocks)]
        for i in range(2):  # upsample
            c = ngf * 4 // 2 ** i
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias),
                       norm_layer(norm, c // 2), nn.ReLU(True)]
        layers += [ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 judges 70x70 patches ('basic'), n_layers=1 16x16 ones. Logits out."""
    def __init__(self, in_nc=3, ndf=64, n_layers=3, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        layers = [nn.Conv2d(in_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_next = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(c, c_next, 4, stride, 1, bias=bias), norm_layer(norm, c_next),
                       nn.LeakyReLU(0.2, True)]
            c = c_next
        layers += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class PixelDiscriminator(nn.Module):
    """1x1 PixelGAN: judges every pixel on its own; in the pix2pix paper (section 4.4) it adds
    colourfulness, not sharpness. Logits out."""
    def __init__(self, in_nc=3, ndf=64, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        self.net = nn.Sequential(nn.Conv2d(in_nc, ndf, 1), nn.LeakyReLU(0.2, True),
                                 nn.Conv2d(ndf, 2 * ndf, 1, bias=bias), norm_layer(norm, 2 * ndf),
                                 nn.LeakyReLU(0.2, True), nn.Conv2d(2 * ndf, 1, 1, bias=bias))

    def forward(self, x):
        return self.net(x)

def init_weights(net, init_type='normal', gain=0.02):
    """The official init: conv weights N(0, gain) (or xavier, kaiming, orthogonal), biases 0;
    batch norm weights N(1, gain), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if init_type == 'normal':
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == 'xavier':
                nn.init.xavier_normal_(m.weight, gain)
            elif init_type == 'kaiming':
                nn.init.kaiming_normal_(m.weight, a=0, mode='fan_in')
            else:
                nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net

def make_generator(netG, in_nc, out_nc, ngf, norm, dropout):
    if netG.startswith('unet'):
        return UnetGenerator(in_nc, out_nc, 8 if netG == 'unet_256' else 7, ngf, norm, dropout)
    return ResnetGenerator(in_nc, out_nc, ngf, norm, 9 if netG == 'resnet_9blocks' else 6, dropout)

def build_generator(args):
    G = make_generator(args.netG, args.input_nc, args.output_nc, args.ngf, args.norm,
                       not args.no_dropout)
    return init_weights(G, args.init_type, args.init_gain)

def build_discriminator(args):
    """Conditional: it sees input and output concatenated along channels."""
    in_nc = args.input_nc + args.output_nc
    if args.netD == 'pixel':
        D = PixelDiscriminator(in_nc, args.ndf, args.norm)
    else:
        n_layers = 3 if args.netD == 'basic' else args.n_layers_D
        D = NLayerDiscriminator(in_nc, args.ndf, n_layers, args.norm)
    return init_weights(D, args.init_type, args.init_gain)

def size_multiple(netG):
    """Input sides must be multiples of this: 2**num_downs for a U-Net, 4 for the ResNet."""
    return {'unet_256': 256, 'unet_128': 128}.get(netG, 4)

# -----------------------------------------------------------------------------
# losses

def gan_loss(pred, target_is_real, gan_mode):
    """The adversarial loss (Eq. 1 of both papers), in float32: least squares ('lsgan',
    CycleGAN's), cross-entropy on logits ('vanilla', pix2pix's) or the critic's mean ('wgangp')."""
    pred = pred.float()
    target = torch.full_like(pred, float(target_is_real))
    if gan_mode == 'lsgan':
        return F.mse_loss(pred, target)
    if gan_mode == 'vanilla':
        return F.binary_cross_entropy_with_logits(pred, target)
    if target_is_real:
        return -pred.mean()
    return pred.mean()

def gradient_penalty(D, real, fake, weight=10.0):
    """WGAN-GP (Gulrajani et al. 2017): push ||grad D|| to 1 on random mixes of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mix).float().sum(), mix, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

def lr_factor(epoch, n_epochs, n_epochs_decay):
    """The learning rate's multiplier after `epoch` epochs: 1, then a linear decay (official)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1))

# -----------------------------------------------------------------------------
# the training step

class DiscriminatorLoss(nn.Module):
    """D's loss as one module, so that data parallelism sees one forward per step. Halved, as in
    the official code, which slows D down relative to G."""
    def __init__(self, D, gan_mode, batch_calls):
        super().__init__()
        self.D = D
        self.gan_mode = gan_mode
        self.batch_calls = batch_calls

    def forward(self, real_A, real_B, fake_B):
        real = torch.cat([real_A, real_B], 1)  # D sees (input, output) pairs
        fake = torch.cat([real_A, fake_B], 1)
        if self.batch_calls:  # per-sample norms allow one call for both; batch norm does not
            pred_real, pred_fake = self.D(torch.cat([real, fake])).chunk(2)
        else:
            pred_real = self.D(real)
            pred_fake = self.D(fake)
        loss_fake = gan_loss(pred_fake, False, self.gan_mode)
        loss_real = gan_loss(pred_real, True, self.gan_mode)
        loss = 0.5 * (loss_fake + loss_real)
        if self.gan_mode == 'wgangp':
            loss = loss + gradient_penalty(self.D, real, fake)
        return loss

def unwrap(m):
    m = getattr(m, 'module', m)  # DistributedDataParallel
    return getattr(m, '_orig_mod', m)  # torch.compile

def train_step(G, D_loss, opt_G, opt_D, real_A, real_B, args, autocast, scaler):
    """One iteration of G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G) (the paper's Eq. 4):
    the discriminator step, then the generator step. Returns the losses."""
    D = unwrap(D_loss).D
    # discriminator step: real pairs against generated pairs (Eq. 1, D's side)
    with autocast:
        fake_B = G(real_A)
        loss_D = D_loss(real_A, real_B, fake_B.detach())
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_D).backward()
    scaler.step(opt_D)
    # generator step, D frozen: fool D (Eq. 1, G's side) and stay close to the truth (Eq. 3)
    D.requires_grad_(False)
    with autocast:
        loss_G_GAN = gan_loss(D(torch.cat([real_A, fake_B], 1)), True, args.gan_mode)
        loss_G_L1 = args.lambda_L1 * F.l1_loss(fake_B.float(), real_B)
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_G_GAN + loss_G_L1).backward()
    scaler.step(opt_G)
    scaler.update()
    D.requires_grad_(True)
    return {'G_GAN': loss_G_GAN.detach(), 'G_L1': loss_G_L1.detach(), 'D': loss_D.detach()}

# -----------------------------------------------------------------------------
# the training loop: its helpers first (device, checkpoints, data, metrics), then train() itself

def check_run(args):
    """What the networks need of the flags, checked before any work."""
    multiple = size_multiple(args.netG)
    if args.crop_size % multiple:
        sys.exit(f"error: --crop_size {args.crop_size} must be a multiple of {multiple} for "
                 f"--netG {args.netG}")
    if args.netG.startswith('unet') and 'crop' not in args.preprocess:
        sys.exit(f"error: --preprocess {args.preprocess} gives images of any size; --netG "
                 f"{args.netG} needs a crop (--preprocess resize_and_crop, crop or "
                 f"scale_width_and_crop)")
    if 'crop' not in args.preprocess and args.batch_size > 1:
        sys.exit(f"error: --preprocess {args.preprocess} keeps each image's own size, so a batch "
                 f"holds one image; use --batch_size 1 or a --preprocess with a crop")

def pick_device(name):
    """--device auto takes CUDA, then MPS, then the CPU; a device that is absent is an error."""
    present = [d for d, ok in [('cuda', torch.cuda.is_available()),
                               ('mps', torch.backends.mps.is_available()), ('cpu', True)] if ok]
    if name != 'auto' and name not in present:
        sys.exit(f"error: --device {name}: not present on this machine (present: "
                 f"{', '.join(present)}); use --device auto")
    return torch.device(present[0] if name == 'auto' else name)

def autocast_dtype(name, device):
    """--dtype; auto: bfloat16 on CUDA compute capability 8+ and on CPUs with AVX-512 BF16 or
    AMX, else float32. Decided on each run, so a resumed run suits the machine it runs on."""
    if name != 'auto':
        return name
    fast = False
    if device.type == 'cuda':
        fast = torch.cuda.get_device_capability(device)[0] >= 8
    elif device.type == 'cpu' and os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            flags = f.read()
        fast = 'avx512_bf16' in flags or 'amx_bf16' in flags
    return 'bfloat16' if fast else 'float32'

def setup(args):
    """Device, process group (under torchrun), seed, autocast and the gradient scaler."""
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    device = pick_device(args.device)
    if ddp and device.type == 'cuda':  # one GPU per process
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
    if ddp:
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    torch.manual_seed(args.seed)  # the same on every process: identical initial weights
    dtype = getattr(torch, autocast_dtype(args.dtype, device))
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    use_scaler = dtype == torch.float16 and device.type == 'cuda'
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return ddp, rank, world, device, autocast, scaler

def check_writable(folder, flag):
    """Fail now rather than at the first save, hours from now."""
    probe = os.path.join(folder, f".write_test.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        sys.exit(f"error: {flag} {folder}: not writable ({e.strerror})")

def checkpoint_paths(args):
    """--ckpt (default out_dir/ckpt.pt), and the checkpoint of the lowest FID beside it: best.pt
    beside ckpt.pt, FILE_best.pt beside another FILE.pt."""
    path = args.ckpt or os.path.join(args.out_dir, 'ckpt.pt')
    if os.path.basename(path) == 'ckpt.pt':
        return path, os.path.join(os.path.dirname(path), 'best.pt')
    return path, os.path.splitext(path)[0] + '_best' + os.path.splitext(path)[1]

def first_line(e):
    """An exception's message in one line, even an empty one."""
    return (str(e).strip() or type(e).__name__).splitlines()[0][:160]

def save_checkpoint(obj, path):
    """Write to a temporary file, fsync, then rename: a crash at any moment leaves the old file
    intact. A failed write (a full disk) removes the temporary file and ends with one line."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        sys.exit(f"error: could not write {path} ({first_line(e)}); an earlier file there is "
                 f"unchanged")

def load_file(path):
    """torch.load with weights_only=True: a file whose unpickling would run code is refused."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: no such checkpoint; give --ckpt FILE")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        sys.exit(f"error: {path}: not a loadable weights file, or one that would run code when "
                 f"loaded ({first_line(e)})")

def check_checkpoint(obj, path, script=SCRIPT):
    """obj, if it is a complete checkpoint of `script`; else one line that says what it is."""
    if not isinstance(obj, dict) or 'script' not in obj:
        sys.exit(f"error: {path} is not a {script}.py checkpoint")
    if obj['script'] != script:
        sys.exit(f"error: {path} is a {obj['script']}.py checkpoint; use {obj['script']}.py")
    needed = ['args', 'epoch', 'epoch_iter', 'step', 'rng_cpu', *STATE]
    missing = [k for k in needed if k not in obj]
    if missing:
        sys.exit(f"error: {path}: a {script}.py checkpoint without {', '.join(missing)}; it "
                 f"cannot be used")
    return obj

def load_weights(net, sd, path):
    """net.load_state_dict(sd), less the running statistics that old official files carry under
    InstanceNorm layers; weights that do not fit are one line naming a few keys."""
    expected = net.state_dict()
    stale = ('running_mean', 'running_var', 'num_batches_tracked')
    sd = {k: v for k, v in sd.items() if k in expected or not k.endswith(stale)}
    found = {'missing': [k for k in expected if k not in sd],
             'unexpected': [k for k in sd if k not in expected],
             'of other shapes': [k for k in expected if k in sd
                                 and getattr(sd[k], 'shape', None) != expected[k].shape]}
    problems = [f"{what}: {', '.join(keys[:3])}" for what, keys in found.items() if keys]
    if problems:
        sys.exit(f"error: {path}: not the weights of this {type(net).__name__} "
                 f"({'; '.join(problems)})")
    net.load_state_dict(sd)
    return net

def resume_args(given, path):
    """The checkpoint's args with the flags given now on top; architecture flags must not change.
    --max_iters holds only if given again; $FID_WEIGHTS, where set, comes before the saved value."""
    ckpt = check_checkpoint(load_file(path), path)
    saved = {**vars(get_parser().parse_args([])), **ckpt['args']}  # older files lack newer flags
    diff = [f"--{k} {given[k]} (checkpoint: {saved[k]})" for k in ARCH_FLAGS
            if k in given and given[k] != saved[k]]
    if diff:
        sys.exit(f"error: cannot resume {path} with a different architecture: {', '.join(diff)}")
    fid_weights = os.environ.get('FID_WEIGHTS', saved['fid_weights'])
    args = {**saved, 'max_iters': None, 'fid_weights': fid_weights, **given}
    return argparse.Namespace(**args), ckpt

def held_out_data(args):
    """A loader of held-out pairs with the evaluation transform: <root>/test, else <root>/val (or
    A/test, A/val); None if the dataroot has neither."""
    channels = (args.input_nc, args.output_nc)
    held = None
    if args.dataroot is None:
        held = data.Synthetic(args.crop_size, True, False, args.direction, channels)
    else:
        phases = [phase for phase in ('test', 'val')
                  if any(os.path.isdir(os.path.join(args.dataroot, d, phase)) for d in ('', 'A'))]
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, train=False)
        for phase in phases[:1]:
            held = data.PairedFolders(args.dataroot, phase, tf, args.direction, channels=channels)
    if args.fid_weights and held is None:
        sys.exit(f"error: --fid_weights: {args.dataroot} has no test or val split (test/, val/, "
                 f"A/test or A/val) to compute FID on")
    if args.fid_weights and len(held) < 2:
        sys.exit(f"error: --fid_weights: FID needs at least 2 held-out pairs; {args.dataroot} "
                 f"has {len(held)}")
    if held is None:
        return None
    same_size = args.dataroot is None or 'crop' in args.preprocess  # else one image at a time
    return torch.utils.data.DataLoader(held, 16 if same_size else 1)

def make_data(args, rank, world, held):
    """The training loader, and four fixed pairs for the grids: of held (the held-out loader)
    where there is one."""
    channels = (args.input_nc, args.output_nc)
    if args.dataroot is None:
        train_set = data.Synthetic(args.crop_size, True, True, args.direction, channels)
    else:
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, not args.no_flip)
        train_set = data.PairedFolders(args.dataroot, 'train', tf, args.direction,
                                       args.max_dataset_size, args.seed, channels)
    sampler = data.EpochSampler(len(train_set), args.seed, not args.serial_batches, rank, world)
    loader = torch.utils.data.DataLoader(
        train_set, args.batch_size, sampler=sampler, num_workers=args.num_threads,
        pin_memory=torch.cuda.is_available(), drop_last=True,
        generator=torch.Generator())  # its own RNG: the global one stays exact on resume
    if held is None:
        return loader, next(iter(torch.utils.data.DataLoader(train_set, 4)))
    return loader, next(iter(torch.utils.data.DataLoader(held.dataset, min(held.batch_size, 4))))

def build_model(args, device):
    """The two networks by name, the two modules the training step runs (G, and D inside its
    loss), and their optimizers. channels_last (NHWC) runs the discriminators faster; the U-Net
    was faster without it."""
    G = build_generator(args).to(device)
    D = build_discriminator(args).to(device, memory_format=torch.channels_last)
    D_loss = DiscriminatorLoss(D, args.gan_mode, args.norm in ('instance', 'none'))
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    return dict(G=G, D=D), G, D_loss, opt_G, opt_D

def distribute(G, D, args, ddp, device):
    """Under torchrun: DistributedDataParallel, so that each step averages the gradients of all
    processes; with --norm syncbatch, batch statistics over all processes too."""
    if not ddp:
        return G, D
    if args.norm == 'syncbatch' and device.type != 'cuda':
        sys.exit("error: --norm syncbatch needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); "
                 "use --norm batch")
    if args.norm == 'syncbatch':
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
    return nn.parallel.DistributedDataParallel(G), nn.parallel.DistributedDataParallel(D)

def save_run(path, args, stateful, world, position, best_fid):
    """The checkpoint: everything needed to continue exactly (`stateful`: networks, optimizers
    and the rest; the position: epoch, iteration in it, iteration; the RNG states, the args and
    the lowest FID so far). Weights that are not finite never reach the disk."""
    for obj in stateful.values():
        if isinstance(obj, nn.Module) and not all(p.isfinite().all() for p in obj.parameters()):
            sys.exit(f"error: the weights became NaN or infinite at iteration {position[2]}; "
                     f"{path} keeps the last good state. Try a lower --lr or --dtype float32")
    ckpt = dict(script=SCRIPT, args=vars(args), epoch=position[0], epoch_iter=position[1],
                step=position[2], world_size=world, rng_cpu=torch.get_rng_state(),
                best_fid=best_fid, **{name: obj.state_dict() for name, obj in stateful.items()})
    if torch.cuda.is_initialized():
        ckpt['rng_cuda'] = torch.cuda.get_rng_state()
    save_checkpoint(ckpt, path)

def restore_run(ckpt, stateful, images_per_step, device):
    """Loads what save_run wrote; returns the position. Under another batch size or number of
    processes it is counted in images: the epoch goes on after the images already seen."""
    for name, obj in stateful.items():
        obj.load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt['rng_cpu'])
    if device.type == 'cuda' and 'rng_cuda' in ckpt:
        torch.cuda.set_rng_state(ckpt['rng_cuda'])
    saved = ckpt['args']['batch_size'] * ckpt.get('world_size', 1)
    epoch_iter = ckpt['epoch_iter'] * saved // images_per_step
    return ckpt['epoch'], epoch_iter, ckpt['step'] * saved // images_per_step

def psnr(x, y):
    """Peak signal-to-noise ratio in dB of images in [-1, 1], per image."""
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp_min(1e-10))

def ssim(x, y, size=11, sigma=1.5):
    """Structural similarity (Wang et al. 2004), Gaussian window, per image; images in [-1, 1]
    are compared as [0, 1]."""
    x, y = (x + 1) / 2, (y + 1) / 2
    g = torch.exp(-(torch.arange(size, device=x.device) - size // 2) ** 2 / (2 * sigma ** 2))
    win = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, size, size)
    blur = functools.partial(F.conv2d, weight=win, groups=x.shape[1])
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)

@contextlib.contextmanager
def test_mode(G, train_mode):
    """Yields the generator to test with: G in eval mode (deterministic: no dropout, running batch
    statistics), or with train_mode, as the paper does, a copy with dropout and batch statistics
    on. Either way G's training state, batch norm statistics and the RNG are left as they were."""
    was_training = G.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if train_mode:
            yield copy.deepcopy(G).train()
        else:
            yield G.eval()
    G.train(was_training)

@torch.no_grad()
def evaluate(G, loader, device, train_mode=False, features=None):
    """Mean L1, PSNR and SSIM of G(A) against the true B, next to the untranslated input's; with
    features (tools/fid.py), FID and KID of G(A) against the real B."""
    sums, n = {}, 0
    reals, fakes = [], []  # features, for FID and KID
    with test_mode(G, train_mode) as G_test:
        for batch in loader:
            A, B = batch['A'].to(device), batch['B'].to(device)
            fake_B = G_test(A).float()
            scores = dict(l1=(fake_B - B).abs().flatten(1).mean(1), psnr=psnr(fake_B, B),
                          ssim=ssim(fake_B, B))
            if A.shape == B.shape:  # the input's own scores need the same channels
                scores.update(l1_input=(A - B).abs().flatten(1).mean(1), psnr_input=psnr(A, B),
                              ssim_input=ssim(A, B))
            for name, v in scores.items():
                sums[name] = sums.get(name, 0) + v.sum().item()
            n += len(A)
            if features is not None:
                reals.append(features(B))
                fakes.append(features(fake_B))
    scores = {k: v / n for k, v in sums.items()}
    if features is not None:
        scores.update(features.distances(torch.cat(reals), torch.cat(fakes)))
    return scores

@torch.no_grad()
def save_samples(G, A, B, path, train_mode=False):
    """One row per sample: input | output | target."""
    with test_mode(G, train_mode) as G_test:
        rows = [A, G_test(A), B]
    grid = torch.stack([r[i].float().expand(3, -1, -1) for i in range(len(A)) for r in rows])
    torchvision.utils.save_image(grid * 0.5 + 0.5, path, nrow=3)  # gray: as RGB

def format_scores(scores, digits=3):
    return ' '.join(f"{k} {v:.{digits}f}" for k, v in scores.items())

def log(out_dir, step, record):
    """Appends the record to out_dir/log.jsonl (tools/to_tensorboard.py shows it in TensorBoard)."""
    with open(os.path.join(out_dir, 'log.jsonl'), 'a') as f:
        f.write(json.dumps(dict(step=step, **record)) + '\n')

class StopRequest:
    """Ctrl-C or SIGTERM sets `requested`: the loop finishes its iteration, saves and exits."""
    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self.request)
        signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame):
        self.requested = True

def start_epoch(loader, epoch, epoch_iter, batch_size):
    """The epoch's batches from iteration epoch_iter on. Sampler and dataset draw the epoch's
    random choices from (seed, epoch), so a resumed run sees the same images."""
    loader.sampler.epoch = epoch
    loader.dataset.epoch = epoch
    loader.sampler.start = epoch_iter * batch_size
    return iter(loader)

def next_batch(batches):
    """(the next batch or None at the end of the epoch, None or the message of a broken file)."""
    try:
        return next(batches, None), None
    except data.DataError as e:  # from a loader worker it arrives with the worker's traceback
        return None, str(e).strip().splitlines()[-1].removeprefix('data.DataError: ')

def any_process(flags, device):
    """Under torchrun: each flag, true on every process if true on any one, so that all stop at
    the same iteration (a process that stopped alone would leave the others waiting forever)."""
    t = torch.tensor(flags, dtype=torch.float32, device=device)
    torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]

def due(step, freq, total):
    """Every freq iterations, and at the last one."""
    return step % freq == 0 or step == total

def train(args, given):
    """Trains pix2pix / PixelGAN as args say; returns the two networks by name."""
    # setup: the run to continue (a new run replaces no earlier one), device, precision
    ckpt_path, best_path = checkpoint_paths(args)
    ckpt = None
    if args.resume:
        args, ckpt = resume_args(given, ckpt_path)
    for path in [ckpt_path, best_path]:
        if ckpt is None and os.path.exists(path):
            sys.exit(f"error: {path} exists; continue that run with --resume, or give another "
                     f"--out_dir (or --ckpt) to start a new one")
    check_run(args)
    check_writable(args.out_dir, '--out_dir')  # on every process, before any waits for another
    ddp, rank, world, device, autocast, scaler = setup(args)
    master = rank == 0  # only rank 0 prints, evaluates and writes
    if master:
        preset = json.dumps({k: vars(args)[k] for k in SYNTHETIC_PRESET})
        print(f"training on {args.dataroot or f'{SYNTHETIC_TASK}, preset {preset}'}")
    features = None  # with --fid_weights, what FID and KID compare: every process loads it, so
    if args.fid_weights:  # that a bad file stops them all; rank 0 uses it
        from tools.fid import FeatureNetwork
        features = FeatureNetwork(args.fid_weights, device)
    # data (the datasets apply --direction), networks, optimizers
    test_loader = held_out_data(args)
    loader, fixed = make_data(args, rank, world, test_loader)
    nets, G, D_loss, opt_G, opt_D = build_model(args, device)
    stateful = dict(**nets, opt_G=opt_G, opt_D=opt_D)
    if master:
        for name, net in nets.items():
            print(f"{name} parameters: {sum(p.numel() for p in net.parameters())}")
    # resume: the state, and the position in the schedule
    epoch, epoch_iter, step, best_fid = 0, 0, 0, math.inf
    if ckpt is not None:
        epoch, epoch_iter, step = restore_run(ckpt, stateful, args.batch_size * world, device)
        best_fid = ckpt.get('best_fid', math.inf)
        if os.path.exists(best_path):  # newer than ckpt.pt after a hard stop
            best = check_checkpoint(load_file(best_path), best_path)
            best_fid = min(best_fid, best['best_fid'])
        if master:
            print(f"resumed {ckpt_path} at epoch {epoch + 1}, iteration {step}")
    G, D_loss = distribute(G, D_loss, args, ddp, device)
    if args.compile:
        G, D_loss = torch.compile(G), torch.compile(D_loss)
    # the schedule: n_epochs + n_epochs_decay epochs, or --max_iters iterations
    if len(loader) == 0:  # per process: each process reads its own shard
        sys.exit(f"error: {len(loader.dataset)} training images make no batch of --batch_size "
                 f"{args.batch_size} on {world} process(es)")
    total = (args.n_epochs + args.n_epochs_decay) * len(loader)
    if args.max_iters is not None:
        total = min(total, args.max_iters)

    stop = StopRequest()
    batches = start_epoch(loader, epoch, epoch_iter, args.batch_size)
    t0 = time.time()
    t_last, step_last, data_time = t0, step, 0.0
    stopping, failed, data_error = False, False, None
    while step < total and not stopping:
        # learning rate: constant for n_epochs, then a linear decay to zero
        lr = args.lr * lr_factor(epoch, args.n_epochs, args.n_epochs_decay)
        for group in opt_G.param_groups + opt_D.param_groups:
            group['lr'] = lr
        # data: the next batch, or the next epoch. A file that broke mid-run ends every process
        t_fetch = time.time()
        batch, data_error = next_batch(batches)
        failed = data_error is not None
        if ddp:
            failed = any_process([failed], device)[0]
        if failed:
            break
        if batch is None:
            epoch, epoch_iter = epoch + 1, 0
            batches = start_epoch(loader, epoch, epoch_iter, args.batch_size)
            continue
        data_time += time.time() - t_fetch  # waiting for the loader: should stay near zero
        # the training step
        real_A = batch['A'].to(device, non_blocking=True)
        real_B = batch['B'].to(device, non_blocking=True)
        loss = train_step(G, D_loss, opt_G, opt_D, real_A, real_B, args, autocast, scaler)
        step, epoch_iter = step + 1, epoch_iter + 1
        losses = {k: v.item() for k, v in loss.items()}
        # stop checks: a NaN loss ends the run before it reaches the checkpoint; Ctrl-C ends it
        # after this iteration's save. Every process stops at the same iteration
        diverging = not all(math.isfinite(v) for v in losses.values())
        stopping = stop.requested
        if ddp:
            diverging, stopping = any_process([diverging, stopping], device)
        if diverging:
            sys.exit(f"error: the loss ({losses}) became NaN or infinite at iteration {step}; "
                     f"{ckpt_path} keeps the last good state. Try a lower --lr or --dtype float32")
        # log: losses, speed, time to go
        if master and due(step, args.print_freq, total):
            seconds, steps = time.time() - t_last, step - step_last
            ips = steps * args.batch_size * world / seconds
            eta = (total - step) * seconds / steps / 60
            print(f"epoch {epoch + 1} iter {step}/{total} | {format_scores(losses)} | {ips:.1f} "
                  f"img/s, data {1000 * data_time / steps:.0f} ms/it | ETA {eta:.1f} min")
            log(args.out_dir, step, dict(epoch=epoch + 1, lr=lr, images_per_s=ips, **losses))
            t_last, step_last, data_time = time.time(), step, 0.0
        # samples: the translations of the fixed held-out images
        if master and due(step, args.display_freq, total):
            path = os.path.join(args.out_dir, f"samples_{step:07d}.png")
            A, B = fixed['A'].to(device), fixed['B'].to(device)
            save_samples(nets['G'], A, B, path, args.test_train_mode)
        # evaluation against the held-out ground truth; FID and KID with --fid_weights
        scores = {}
        if master and test_loader is not None and due(step, args.eval_freq, total):
            scores = evaluate(nets['G'], test_loader, device, args.test_train_mode, features)
            print(f"eval at iter {step}: {format_scores(scores)}")
            log(args.out_dir, step, scores)
        # save: best.pt at a new lowest FID; ckpt.pt every
        # save_latest_freq iterations, at the end, and when asked to stop
        if scores.get('fid', math.inf) < best_fid:
            best_fid = scores['fid']
            save_run(best_path, args, stateful, world, [epoch, epoch_iter, step], best_fid)
        if master and (due(step, args.save_latest_freq, total) or stopping):
            save_run(ckpt_path, args, stateful, world, [epoch, epoch_iter, step], best_fid)

    if ddp:
        torch.distributed.destroy_process_group()
    if failed:  # rank 0 saves the last finished iteration; the process that met the file names it
        message = data_error or "a file broke on another process (its message names it)"
        if master:
            save_run(ckpt_path, args, stateful, world, [epoch, epoch_iter, step], best_fid)
            message += (f"\nsaved {ckpt_path} at iteration {step}; fix or remove the file, "
                        f"then add --resume")
        sys.exit(f"error: {message}")
    if master and stopping:
        print(f"interrupted: saved {ckpt_path} at iteration {step}; continue with: "
              f"python {SCRIPT}.py --resume --ckpt {ckpt_path}")
    if stopping:
        sys.exit(130)
    if master:
        saved = f"; checkpoint {ckpt_path}" if os.path.exists(ckpt_path) else ""
        print(f"done: {step} iterations in {(time.time() - t0) / 60:.1f} min{saved}")
    return nets

# -----------------------------------------------------------------------------
# inference

def official_norm(sd, first_conv):
    """The norm an official file was trained with: batch norm keeps weights of its own; else the
    convolutions carry a bias only with instance norm (the official rule), none with 'none'."""
    if any(v.ndim == 1 and k.endswith('.weight') for k, v in sd.items()):
        return 'batch'
    return 'instance' if first_conv + '.bias' in sd else 'none'

def load_generator(path, direction='AtoB', obj=None):
    """The generator from our checkpoint, or from an official .pth state_dict (U-Net depth or
    ResNet blocks, width, channels, norm, dropout read from its keys and shapes), and the
    multiple its input sides need. (direction: the datasets apply it; here for cyclegan's sake)"""
    if obj is None:  # obj: the file's contents, if already loaded
        obj = load_file(path)
    if isinstance(obj, dict) and 'script' in obj:
        a = check_checkpoint(obj, path)['args']
        G = make_generator(a['netG'], a.get('input_nc', 3), a.get('output_nc', 3), a['ngf'],
                           a['norm'], not a['no_dropout'])
        return load_weights(G, obj['G'], path), size_multiple(a['netG'])
    sd = {re.sub(r'^module\.', '', k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if 'model.model.0.weight' in sd:
        num_downs = max(k.split('.').count('model') for k in sd) - 1
        first = sd['model.model.0.weight']
        out_nc = getattr(sd.get('model.model.3.weight'), 'shape', [0, 3])[1]  # ConvTranspose
        G = UnetGenerator(first.shape[1], out_nc, num_downs, first.shape[0],
                          official_norm(sd, 'model.model.0'))
        return load_weights(G, sd, path), 2 ** num_downs
    w = sd.get('model.1.weight')
    if w is None or w.ndim != 4 or w.shape[-1] != 7:
        kind = 'not a generator state_dict'
        if 'model.0.weight' in sd or 'net.0.weight' in sd:
            kind = 'a discriminator'
        sys.exit(f"error: {path}: {kind}; pixelgan.py needs a U-Net or ResNet generator")
    n_blocks = len({k.split('.')[1] for k in sd if 'conv_block' in k})
    dropout = getattr(sd.get('model.10.conv_block.6.weight'), 'ndim', 0) == 4  # a conv there
    out_nc = getattr(sd.get(f"model.{n_blocks + 17}.weight"), 'shape', [3])[0]  # the last conv
    norm = official_norm(sd, 'model.1')
    G = ResnetGenerator(w.shape[1], out_nc, w.shape[0], norm, n_blocks, dropout)
    return load_weights(G, sd, path), 4

def run_generator(G, x, multiple):
    """G on an image of any size: padded to a multiple, and to at least 8 pixels (the ResNet's
    reflection padding needs 2 after its two downsamplings), then cropped back. The padding
    reflects the image where it is large enough, else repeats its edge."""
    h, w = x.shape[-2:]
    pad_h = max(-h % multiple, max(multiple, 8) - h)
    pad_w = max(-w % multiple, max(multiple, 8) - w)
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return G(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]

def save_png(y, path):
    """y in [-1, 1], 1 x C x H x W: an 8-bit RGB PNG, or for one channel a 16-bit grayscale PNG,
    which keeps the output's precision."""
    y = (y[0].float().cpu() * 0.5 + 0.5).clamp(0, 1)
    if len(y) == 1:
        Image.fromarray((y[0] * 65535).round().numpy().astype('uint16')).save(path)
    else:
        torchvision.utils.save_image(y, path)

def input_channels(G):
    """The channels a generator takes: its first convolution's."""
    return next(p for p in G.parameters() if p.ndim == 4).shape[1]

@torch.no_grad()
def translate(args):
    """--translate: each image under the path, at its own size, through the generator (in eval
    mode; with --test_train_mode in train mode); a PNG per image with the same relative name, and
    an index.html that shows input and output."""
    device = pick_device(args.device)
    ckpt_path = checkpoint_paths(args)[0]
    G, multiple = load_generator(ckpt_path, args.direction)
    G.train(args.test_train_mode).to(device)
    channels = input_channels(G)
    if channels not in (1, 3):
        sys.exit(f"error: {ckpt_path}: a generator of {channels}-channel images; --translate "
                 f"reads images as 1 (grayscale) or 3 (RGB) channels")
    paths, base = [args.translate], os.path.dirname(args.translate)
    if not os.path.isfile(args.translate):
        paths, base = data.find_images(args.translate), args.translate
    outs = [os.path.join(args.results_dir, os.path.splitext(os.path.relpath(p, base))[0] + '.png')
            for p in paths]
    clash = {os.path.abspath(p) for p in paths} & {os.path.abspath(p) for p in outs}
    if clash:
        sys.exit(f"error: --results_dir {args.results_dir}: the output would replace the input "
                 f"{clash.pop()}; choose another --results_dir")
    check_writable(args.results_dir, '--results_dir')
    rows = []
    for path, out in zip(paths, outs):
        x = torchvision.transforms.functional.to_tensor(data.load_image(path, channels))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        save_png(run_generator(G, x[None].to(device) * 2 - 1, multiple), out)
        src, dst = (os.path.relpath(os.path.abspath(p), os.path.abspath(args.results_dir))
                    for p in (path, out))
        rows.append(f"<tr><td>{src}</td><td><img src='{src}'></td><td><img src='{dst}'></td></tr>")
    with open(os.path.join(args.results_dir, 'index.html'), 'w') as f:
        f.write("<html><body><table><tr><th>file</th><th>input</th><th>output</th></tr>"
                f"{''.join(rows)}</table></body></html>\n")
    print(f"translated {len(paths)} image(s) into {args.results_dir} (index.html shows them)")

def main(argv=None):
    args, given = parse_args(argv)
    try:
        if args.translate:
            translate(args)
        else:
            train(args, given)
    except data.DataError as e:
        sys.exit(f"error: {e}")

if __name__ == '__main__':
    sys.stdout.reconfigure(line_buffering=True)  # progress shows at once, also in a log file
    main()

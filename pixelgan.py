"""pix2pix and PixelGAN in one file: paired image-to-image translation (Isola et al., CVPR 2017).
A U-Net generator G maps an input image A to its target B; a conditional discriminator D judges
(A, B) pairs, per pixel (the 1x1 PixelGAN) or per patch (PatchGAN).

    python pixelgan.py                                       # built-in task, minutes on a CPU
    python pixelgan.py --dataroot datasets/facades --netD basic --direction BtoA  # the paper's
    python pixelgan.py --resume                              # continue out/pixelgan/ckpt.pt
    torchrun --standalone --nproc_per_node=8 pixelgan.py --dataroot ...
"""
import argparse, contextlib, copy, datetime, functools, io, json, math, os, shlex, signal, sys
import tempfile, time
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import data

# -----------------------------------------------------------------------------
# config: the official flags keep their names and defaults, but --netD's (official: basic)

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage text too
        sys.exit(f"error: {message}; --help lists the flags")

def bounded(kind, low, high=math.inf, above=False):
    """An argparse type: a finite number of `kind`, at least low (above it, with above), < high."""
    bound = f"{'above' if above else 'at least'} {low}"
    if high < math.inf:
        bound += f" and below {high}"
    def check(text):
        value = kind(text)
        if not low <= value < high or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value
    check.__name__ = kind.__name__  # argparse names it in "invalid int value: '1.5'"
    return check

COUNT, NATURAL = bounded(int, 0), bounded(int, 1)
WEIGHT, FRACTION = bounded(float, 0.0), bounded(float, 0.0, 1.0, above=True)

def get_parser():
    p = ArgumentParser(description='pix2pix / PixelGAN: paired image-to-image translation')
    a = p.add_argument
    a('--dataroot', help='pairs: <root>/train/ side by side, or <root>/A|B/train/; none: built-in')
    a('--netG', default='unet_256', choices=['unet_256', 'unet_128'])
    a('--netD', default='pixel', choices=['pixel', 'basic', 'n_layers'],
      help='pixel: 1x1 PixelGAN (our default, measured best, see README); basic: 70x70 PatchGAN')
    a('--n_layers_D', type=NATURAL, default=3, help='depth of the n_layers discriminator')
    a('--input_nc', type=int, default=3, choices=[1, 3], help='input channels: 1 gray, 3 RGB')
    a('--output_nc', type=int, default=3, choices=[1, 3], help='output (target) channels')
    a('--ngf', type=NATURAL, default=64, help='generator width (filters in the first conv)')
    a('--ndf', type=NATURAL, default=64, help='discriminator width')
    a('--norm', default='batch', choices=['batch', 'instance', 'none'])
    a('--no_dropout', action='store_true', help='no dropout in the generator')
    a('--init_gain', type=FRACTION, default=0.02, help='std of the normal init of the weights')
    a('--gan_mode', default='vanilla', choices=['vanilla', 'lsgan'])
    a('--lambda_L1', type=WEIGHT, default=100.0, help='weight of the L1 loss')
    a('--lr', type=FRACTION, default=0.0002)
    a('--beta1', type=bounded(float, 0.0, 1.0), default=0.5, help='Adam beta1')
    a('--n_epochs', type=COUNT, default=100, help='epochs at the initial learning rate')
    a('--n_epochs_decay', type=COUNT, default=100, help='epochs of linear decay to zero')
    a('--batch_size', type=NATURAL, default=1, help='per process')
    a('--load_size', type=NATURAL, default=286, help='resize images to this size ...')
    a('--crop_size', type=NATURAL, default=256, help='... then randomly crop to this size')
    a('--preprocess', default='resize_and_crop',
      choices=['resize_and_crop', 'crop', 'scale_width_and_crop'])
    a('--no_flip', action='store_true', help='no random horizontal flips')
    a('--serial_batches', action='store_true', help='take images in order instead of shuffled')
    a('--direction', default='AtoB', choices=['AtoB', 'BtoA'], help='AtoB: left/A to right/B')
    a('--num_threads', type=COUNT, default=4, help='loader processes, at most the CPUs present')
    a('--max_dataset_size', type=NATURAL, default=None, help='at most this many training pairs')
    a('--print_freq', type=NATURAL, default=100, help='iterations between progress lines')
    a('--display_freq', type=NATURAL, default=400, help='iterations between sample grids')
    a('--save_latest_freq', type=NATURAL, default=5000, help='iterations between checkpoints')
    a('--seed', type=bounded(int, 0, 2 ** 63), default=0)
    a('--out_dir', default='out/pixelgan', help='new: checkpoint, samples and log.jsonl go here')
    a('--max_iters', type=COUNT, default=None, help='new: stop after this many iterations')
    a('--eval_freq', type=NATURAL, default=1000, help='new: iterations between evaluations')
    a('--fid', action='store_true', help='new: FID, KID and best.pt (see tools/fid.py)')
    a('--fid_weights', metavar='FILE', help='new: --fid with the FID Inception weights in FILE')
    a('--test_train_mode', action='store_true', help='new: evaluate in train mode, as the paper')
    a('--resume', action='store_true', help='new: continue from --ckpt (default out_dir/ckpt.pt)')
    a('--ckpt', help='new: the checkpoint to write, or with --resume to continue')
    a('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'], help='new')
    a('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
      help='new: autocast precision; auto: the fastest the hardware has (see autocast_dtype)')
    a('--compile', action='store_true', help='new: torch.compile the networks')
    return p

# Without --dataroot: the built-in task, in minutes on 2 CPU cores; flags typed override this.
SYNTHETIC_PRESET = dict(netG='unet_128', ngf=32, ndf=32, crop_size=128, load_size=128,
                        batch_size=2, lr=0.0004, num_threads=0, n_epochs=1, n_epochs_decay=0,
                        print_freq=50, display_freq=250, eval_freq=500, save_latest_freq=500)
SCRIPT = 'pixelgan'
NETWORKS = ['G', 'D']  # their names in the checkpoint and the official files
# flags a resumed run keeps: the networks, the batch size its position counts in, the direction
FIXED_FLAGS = ['netG', 'netD', 'n_layers_D', 'ngf', 'ndf', 'norm', 'no_dropout', 'input_nc',
               'output_nc', 'batch_size', 'direction']

def parse_args(argv=None):
    """The args, and the flags typed (which override the preset and a checkpoint's)."""
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
    if norm == 'batch':
        return nn.BatchNorm2d(channels)
    return nn.Identity()

class UnetBlock(nn.Module):
    """One level of the U-Net: downsample, the inner levels, upsample, and a skip connection that
    concatenates this level's input to its output. Built from the innermost level outwards."""
    def __init__(self, outer_nc, inner_nc, in_nc=None, inner=None, norm='batch', dropout=False):
        super().__init__()
        bias = norm == 'instance'
        down = nn.Conv2d(in_nc or outer_nc, inner_nc, 4, 2, 1, bias=bias)
        self.outermost = in_nc is not None
        if self.outermost:
            layers = [down, inner, nn.ReLU(inplace=True),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1), nn.Tanh()]
        elif inner is None:  # innermost: no norm at the 1x1 bottleneck
            layers = [nn.LeakyReLU(0.2, inplace=True), down, nn.ReLU(inplace=True),
                      nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=bias),
                      norm_layer(norm, outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2, inplace=True), down, norm_layer(norm, inner_nc), inner,
                      nn.ReLU(inplace=True),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, 2, 1, bias=bias),
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

class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 judges 70x70 patches ('basic'), n_layers=1 16x16 ones. Logits out."""
    def __init__(self, in_nc=3, ndf=64, n_layers=3, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        layers = [nn.Conv2d(in_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_next = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(c, c_next, 4, stride, 1, bias=bias), norm_layer(norm, c_next),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = c_next
        layers += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

class PixelDiscriminator(nn.Module):
    """1x1 PixelGAN: judges each pixel alone; it adds colourfulness, not sharpness (section 4.4)."""
    def __init__(self, in_nc=3, ndf=64, norm='instance'):
        super().__init__()
        bias = norm == 'instance'
        self.net = nn.Sequential(nn.Conv2d(in_nc, ndf, 1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(ndf, 2 * ndf, 1, bias=bias), norm_layer(norm, 2 * ndf),
                                 nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(2 * ndf, 1, 1, bias=bias))

    def forward(self, x):
        return self.net(x)

def init_weights(net, gain=0.02):
    """The papers' init: conv weights N(0, gain), biases 0; batch norm weights N(1, gain)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net

def build_model(args, device):
    """G and D (conditional: it sees input and output stacked), initialised, and two Adams.
    channels_last (NHWC) runs the discriminators faster; the U-Net was faster without it."""
    num_downs = 8 if args.netG == 'unet_256' else 7
    G = UnetGenerator(args.input_nc, args.output_nc, num_downs, args.ngf, args.norm,
                      dropout=not args.no_dropout)
    G = init_weights(G, args.init_gain).to(device)
    in_nc = args.input_nc + args.output_nc
    if args.netD == 'pixel':
        D = PixelDiscriminator(in_nc, args.ndf, args.norm)
    else:
        n_layers = 3 if args.netD == 'basic' else args.n_layers_D
        D = NLayerDiscriminator(in_nc, args.ndf, n_layers, args.norm)
    D = init_weights(D, args.init_gain).to(device)
    if device.type != 'mps':  # (MPS runs channels_last convolutions slowly)
        D = D.to(memory_format=torch.channels_last)
    adam = functools.partial(torch.optim.Adam, lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    return dict(G=G, D=D), adam(G.parameters()), adam(D.parameters())


# -----------------------------------------------------------------------------
# losses and the training step

def gan_loss(pred, target_is_real, gan_mode):
    """Eq. 1 of both papers, in float32: least squares ('lsgan') or cross-entropy on logits."""
    pred = pred.float()
    target = torch.full_like(pred, float(target_is_real))
    if gan_mode == 'lsgan':
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)

def discriminator_loss(D, real, fake, args):
    """D's side of Eq. 1, halved as in the official code (it slows D down relative to G)."""
    if args.norm != 'batch' and real.shape == fake.shape:  # per-sample norms: one call, exact
        pred_real, pred_fake = D(torch.cat([real, fake])).chunk(2)
    else:
        pred_real, pred_fake = D(real), D(fake)
    return 0.5 * (gan_loss(pred_real, True, args.gan_mode) +
                  gan_loss(pred_fake, False, args.gan_mode))

def lr_factor(epoch, n_epochs, n_epochs_decay):
    """The learning rate's multiplier after `epoch` epochs: 1, then a linear decay (official)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1))

def train_step(nets, opt_G, opt_D, real_A, real_B, args, autocast, scaler):
    """One iteration of G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G) (the paper's Eq. 4):
    the discriminator step, then the generator step."""
    G, D = nets['G'], nets['D']
    # discriminator step: real pairs against generated pairs; D sees (input, output)
    with autocast:
        fake_B = G(real_A)
        real_pair = torch.cat([real_A, real_B], 1)
        fake_pair = torch.cat([real_A, fake_B.detach()], 1)
        loss_D = discriminator_loss(D, real_pair, fake_pair, args)
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
    losses = {'G_GAN': loss_G_GAN, 'G_L1': loss_G_L1, 'D': loss_D}
    return {k: v.detach() for k, v in losses.items()}  # on the device: reading them would wait

# -----------------------------------------------------------------------------
# the training loop's helpers: setup, files and checkpoints, data and evaluation, stops

def check_run(args):  # what the networks need of the flags, checked before any work
    multiple = 2 ** (8 if args.netG == 'unet_256' else 7)  # the U-Net halves the size that often
    if args.crop_size % multiple:
        sys.exit(f"error: --crop_size {args.crop_size}: not a multiple of {multiple} ({args.netG})")
    n_layers = {'pixel': 0, 'basic': 3}.get(args.netD, args.n_layers_D)  # each halves the size
    if args.crop_size < 3 * 2 ** n_layers:  # and two more convolutions need 3 pixels
        sys.exit(f"error: --crop_size {args.crop_size} is too small for --n_layers_D {n_layers}; "
                 f"give at most {int(math.log2(args.crop_size / 3))}")

def pick_device(name):  # auto: CUDA, then MPS, then the CPU; one that is absent is an error
    present = [d for d, ok in [('cuda', torch.cuda.is_available()),
                               ('mps', torch.backends.mps.is_available()), ('cpu', True)] if ok]
    if name != 'auto' and name not in present:
        sys.exit(f"error: --device {name}: not present here (present: {', '.join(present)})")
    return torch.device(present[0] if name == 'auto' else name)

def autocast_dtype(name, device):
    """auto: bfloat16 on CUDA 8.0+ and CPUs with AVX-512 BF16 (AMX's have it), float16 on 7.x."""
    if name != 'auto':
        return name
    capability = 0
    if device.type == 'cuda':
        capability = torch.cuda.get_device_capability(device)[0]
    if capability >= 8 or device.type == 'cpu' and torch.cpu._is_avx512_bf16_supported():
        return 'bfloat16'
    return 'float16' if capability == 7 else 'float32'

def setup(args):  # device, process group (torchrun: a GPU per process), seeds, precision
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    device = pick_device(args.device)
    if 'RANK' in os.environ and device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
    if 'RANK' in os.environ:  # (CPU tensors go through gloo; no evaluation or save nears 2 hours)
        backend = 'cpu:gloo,cuda:nccl' if device.type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    torch.manual_seed(args.seed + rank)  # its own dropout and pool draws; DDP: rank 0's weights
    torch.backends.cudnn.benchmark = 'crop' in args.preprocess  # one size: tuned, as official
    dtype = getattr(torch, autocast_dtype(args.dtype, device))
    if dtype == torch.float16 and device.type != 'cuda':  # (without loss scaling it underflows)
        sys.exit("error: --dtype float16 is trained with loss scaling, on CUDA only; use bfloat16")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return rank, world, device, autocast, scaler

def in_one_line(e):  # an exception's message in one line (torch's lists of keys too)
    return (' '.join(str(e).split()) or type(e).__name__)[:240]

def save_file(obj, path, replace=False):
    """obj (bytes or a writer) via a private file beside path: a crash leaves an earlier whole."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=f".{os.path.basename(path)}.")
        with os.fdopen(fd, 'wb') as f:
            if isinstance(obj, bytes):
                f.write(obj)
            else:
                obj(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # (read back at once: mkstemp's file is private, the result is not)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if os.path.lexists(path) and not replace:
            sys.exit(f"error: {path} exists; it is not replaced (a run's: --resume it)")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # (torch.save's writer hides the OSError beneath)
        reason = e.__context__ if isinstance(e.__context__, OSError) else e
        sys.exit(f"error: could not write {path} ({in_one_line(reason)}); nothing was replaced")
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)

def load_file(path):  # weights only: a file whose unpickling would run code is refused
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        reason = in_one_line(e)
        sys.exit(f"error: {path}: not a loadable weights file, or it would run code ({reason})")

def check_checkpoint(obj, path):
    """obj, if a whole checkpoint of `script`, each field of its type and range; else one line."""
    if not isinstance(obj, dict) or obj.get('script') not in ('cyclegan', 'pixelgan'):
        sys.exit(f"error: {path} is not a checkpoint of cyclegan.py or pixelgan.py")
    if obj['script'] != SCRIPT:
        sys.exit(f"error: {path} is a {obj['script']}.py checkpoint; use {obj['script']}.py")
    fields = dict(args=isinstance(obj.get('args'), dict), rng=isinstance(obj.get('rng'), list),
                  step=type(obj.get('step')) is int and obj['step'] >= 0,
                  best_fid=type(obj.get('best_fid')) is float and obj['best_fid'] >= 0)
    damaged = [k for k, ok in fields.items() if not ok]  # (the rest: when restored)
    if damaged:
        sys.exit(f"error: {path}: a {SCRIPT}.py checkpoint whose {damaged[0]} is missing or bad")
    known = vars(get_parser().parse_args([]))  # the args, read again as a command line would be
    flags = {k: v for k, v in obj['args'].items() if k in known and v not in (None, False)}
    argv = [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items()]
    try:  # (older files lack newer flags: their defaults)
        obj['args'] = vars(get_parser().parse_args(argv))
    except SystemExit as e:
        sys.exit(f"error: {path}: its args are damaged ({str(e.code).removeprefix('error: ')})")
    return obj

def resume_args(given, path, purpose='resume'):
    """The checkpoint's args under the flags given now (FIXED_FLAGS stay; --max_iters: if given)."""
    ckpt = check_checkpoint(load_file(path), path)
    saved = ckpt['args']  # (as the parser reads them)
    diff = [f"--{k} {given[k]} (checkpoint: {saved[k]})" for k in FIXED_FLAGS
            if k in given and given[k] != saved[k]]
    if diff:
        sys.exit(f"error: cannot {purpose} {path} with other flags: {', '.join(diff)}")
    return argparse.Namespace(**{**saved, 'max_iters': None, **given}), ckpt

def finite(nets):  # (one wait for the device)
    return bool(torch.stack([p.isfinite().all() for net in nets for p in net.parameters()]).all())

def save_run(path, args, checkpointed, step, best_fid, device, replace=True):
    """All that resuming exactly needs, every process's RNG too; rank 0 writes it, if finite."""
    state = dict(cpu=torch.get_rng_state())
    if device.type in ('cuda', 'mps'):
        state[device.type] = getattr(torch, device.type).get_rng_state()
    states = [state]
    if torch.distributed.is_initialized():  # (objects go through gloo, on the CPU)
        states = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, state)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return
    if not finite([checkpointed[name] for name in NETWORKS]):
        sys.exit(f"error: the weights became NaN or infinite by iteration {step}; {path} keeps "
                 f"the last good state: try a lower --lr, or float32")
    ckpt = dict(script=SCRIPT, args=vars(args), step=step, rng=states, best_fid=best_fid,
                **{name: obj.state_dict() for name, obj in checkpointed.items()})
    save_file(functools.partial(torch.save, ckpt), path, replace)

def restore_run(ckpt, checkpointed, path, device, rank):  # what save_run wrote: step, best FID
    try:  # (name: the part that does not load)
        for name, obj in checkpointed.items():
            obj.load_state_dict(ckpt[name])
        name = 'rng'  # each process its own generators (more processes than saved: the last one's)
        state = ckpt['rng'][min(rank, len(ckpt['rng']) - 1)]
        torch.set_rng_state(state['cpu'])
        if device.type != 'cpu' and device.type in state:
            getattr(torch, device.type).set_rng_state(state[device.type])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        sys.exit(f"error: {path}: its {name} does not load ({in_one_line(e)})")
    if not finite([checkpointed[name] for name in NETWORKS]):
        sys.exit(f"error: {path}: its weights are NaN or infinite; it is damaged")
    return ckpt['step'], ckpt['best_fid']

def open_log(out_dir, resuming):
    """log.jsonl, locked till the process ends (lockf: not by its workers); one run per out_dir."""
    log_path = os.path.join(out_dir, 'log.jsonl')
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = open(log_path, 'a', buffering=1)  # a line at a time
        if os.name == 'posix':  # (Windows has no such lock)
            import fcntl
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"error: --out_dir {out_dir}: another run is writing there; give another one")
    except OSError as e:
        sys.exit(f"error: --out_dir {out_dir}: cannot write log.jsonl there ({e.strerror})")
    if not resuming and os.path.getsize(log_path):
        sys.exit(f"error: {log_path} holds an earlier run's log: --resume it, or give another one")
    return f

def log(f, step, record):  # a line of log.jsonl (tools/to_tensorboard.py: TensorBoard)
    try:
        f.write(json.dumps(dict(step=step, **record), allow_nan=False) + '\n')
    except ValueError:  # a NaN, which JSON has no word for: the weights have diverged
        sys.exit(f"error: the run diverged: NaN by iteration {step}; try a lower --lr, or float32")

def make_data(args, rank, world):
    """The training loader: this process's shard, in an order drawn from (seed, epoch)."""
    channels = (args.input_nc, args.output_nc)
    train_set = data.Synthetic(args.crop_size, paired=True, train=True, direction=args.direction,
                               channels=channels)
    if args.dataroot is not None:
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, not args.no_flip)
        train_set = data.PairedFolders(args.dataroot, 'train', tf, args.direction,
                                       args.max_dataset_size, args.seed, channels)
    return data.train_loader(train_set, args.batch_size, args.num_threads, args.seed,
                             not args.serial_batches, rank, world)

def held_out_data(args):
    """The held-out pairs: <root>/test, else val (or A/test, A/val), or the built-in task's."""
    channels = (args.input_nc, args.output_nc)
    held = data.Synthetic(args.crop_size, paired=True, train=False, direction=args.direction,
                          channels=channels)
    if args.dataroot is not None:
        phases = [phase for phase in ('test', 'val')
                  if any(os.path.isdir(os.path.join(args.dataroot, d, phase)) for d in ('', 'A'))]
        if (args.fid or args.fid_weights) and not phases:
            sys.exit(f"error: --fid: {args.dataroot} has no test or val split to compute FID on")
        if not phases:
            return None
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, train=False)
        held = data.PairedFolders(args.dataroot, phases[0], tf, args.direction, channels=channels)
    return held

def psnr(x, y):  # peak signal-to-noise ratio in dB of images in [-1, 1], per image
    return 10 * torch.log10(4 / ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-10))

@contextlib.contextmanager
def test_mode(G, train_mode):
    """G to test with: in eval mode, or (train_mode, as the paper tests) a copy in train mode;
    G's mode, batch statistics and the RNG are left as they were."""
    was_training = G.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if train_mode:
            yield copy.deepcopy(G).train()
        else:
            yield G.eval()
    G.train(was_training)

@torch.no_grad()
def evaluate(G, held, device, train_mode=False, features=None, reals=None):
    """L1 and PSNR of G(A) against B and of A itself; FID and KID against reals; each its share."""
    rows, fakes = [], []
    with test_mode(G, train_mode) as G_test:
        for batch in data.share_loader(held):
            A, B = batch['A'].to(device), batch['B'].to(device)
            fake_B = G_test(A).float()
            scores = [(fake_B - B).abs().flatten(1).mean(1), psnr(fake_B, B)]
            if A.shape == B.shape:  # the input's own scores need the same channels
                scores += [(A - B).abs().flatten(1).mean(1), psnr(A, B)]
            rows.append(torch.stack(scores, 1))
            if features is not None:
                fakes.append(features(fake_B))
    means = data.gather(torch.cat(rows), len(held)).mean(0).tolist()
    scores = dict(zip(['l1', 'psnr', 'l1_input', 'psnr_input'], means))
    if features is not None:
        scores.update(features.distances(reals, data.gather(torch.cat(fakes), len(held))))
    return scores

@torch.no_grad()
def save_samples(G, A, B, path, train_mode=False):  # one row per sample: input, output, target
    with test_mode(G, train_mode) as G_test:
        rows = [A, G_test(A), B]
    grid = torch.stack([r[i].float().expand(3, -1, -1) for i in range(len(A)) for r in rows])
    png = io.BytesIO()
    torchvision.utils.save_image(grid * 0.5 + 0.5, png, format='png', nrow=3)  # gray: as RGB
    save_file(png.getvalue(), path, replace=True)  # (a resumed run draws that iteration's again)

STOP_REQUESTS = []  # Ctrl-C and SIGTERM as they come: the loop finishes its iteration, saves, exits

def request_stop(signum, frame):
    STOP_REQUESTS.append(signum)
    if hasattr(signal, 'SIGCHLD'):  # loader workers get SIGTERM too (timeout, Slurm, systemd send
        signal.signal(signal.SIGCHLD, request_stop)  # it to all): their end is part of the stop

def next_batch(batches):
    """The next batch (None: the epoch ended) and whether all stop (a signal came to any)."""
    batch = None
    try:
        batch = next(batches, None)
    except Exception:  # the loader's workers ended (with the signal: it shows in several ways)
        if not STOP_REQUESTS:
            raise
    stop = torch.tensor([len(STOP_REQUESTS)])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(stop, torch.distributed.ReduceOp.MAX)
    return batch, stop.tolist()[0] > 0

def read_losses(loss, step, ckpt_path):  # their mean over the processes: one device transfer
    values = torch.stack(list(loss.values()))
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    losses = dict(zip(loss, values.tolist()))
    if not all(math.isfinite(v) for v in losses.values()):  # (save_run never writes NaN either)
        sys.exit(f"error: the loss became NaN or infinite by iteration {step}; {ckpt_path} keeps "
                 f"the last good state: try a lower --lr, or float32")
    return losses

def due(step, freq, total):  # every freq iterations, and at the last one
    return step % freq == 0 or step == total

def train(args, given):  # trains pix2pix / PixelGAN as args say; returns the two networks
    ckpt_path = args.ckpt or os.path.join(args.out_dir, 'ckpt.pt')
    best_path = os.path.join(os.path.dirname(ckpt_path), 'best.pt')  # the lowest FID's
    ckpt = None
    if args.resume:
        args, ckpt = resume_args(given, ckpt_path)
    check_run(args)
    rank, world, device, autocast, scaler = setup(args)
    master = rank == 0  # only rank 0 prints and writes
    if master:
        log_file = open_log(args.out_dir, resuming=ckpt is not None)
    # data (the datasets apply --direction); FID's network and the real targets' features, once
    loader = make_data(args, rank, world)
    held = held_out_data(args)
    sample_pairs = loader.dataset if held is None else held  # four shown in the samples
    fixed = next(iter(torch.utils.data.DataLoader(sample_pairs, 4)))
    features, reals = None, None
    if args.fid or args.fid_weights:  # every process loads it: a bad file stops them all
        from tools import fid
        features = fid.FeatureNetwork(args.fid_weights or fid.default_weights(), device)
        reals = features.of_dataset(held, 'B')
    # networks, optimizers
    nets, opt_G, opt_D = build_model(args, device)
    checkpointed = dict(**nets, opt_G=opt_G, opt_D=opt_D)
    # resume; or claim the checkpoint now: an unwritable --ckpt folder fails here, not at the end
    step, best_fid = 0, math.inf
    if ckpt is not None:
        step, best_fid = restore_run(ckpt, checkpointed, ckpt_path, device, rank)
    elif os.path.lexists(best_path):  # (and save_run refuses an existing ckpt_path)
        sys.exit(f"error: {best_path} exists: --resume its run, or give another --out_dir")
    else:
        save_run(ckpt_path, args, checkpointed, step, best_fid, device, replace=False)
    # the networks as the step runs them: under torchrun in DDP, which averages the gradients
    # while the backward runs (and gives every process rank 0's weights); with --compile compiled
    train_nets = dict(nets)
    if torch.distributed.is_initialized():
        train_nets = {k: nn.parallel.DistributedDataParallel(v) for k, v in nets.items()}
    if args.compile:
        train_nets = {k: torch.compile(v) for k, v in train_nets.items()}
    if master:  # the run's flags open its log
        log(log_file, step, dict(args=vars(args)))
        sizes = ', '.join(f"{k} {sum(p.numel() for p in v.parameters())}" for k, v in nets.items())
        print(f"training on {args.dataroot or 'the built-in synthetic task'} from iteration "
              f"{step}; parameters: {sizes}")
    iters = len(loader)  # per epoch, per process
    total = (args.n_epochs + args.n_epochs_decay) * iters
    total = min(total, math.inf if args.max_iters is None else args.max_iters)
    batches = data.start_epoch(loader, step, iters)  # (first: a stop replaces its SIGCHLD handler)
    STOP_REQUESTS.clear()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    start = step  # (the checkpoint holds it)
    t0 = time.time()
    t_last, step_last = t0, step
    stopping = False
    while step < total and not stopping:
        # learning rate: constant for n_epochs, then a linear decay to zero
        epoch = step // iters
        lr = args.lr * lr_factor(epoch, args.n_epochs, args.n_epochs_decay)
        for group in opt_G.param_groups + opt_D.param_groups:
            group['lr'] = lr
        # data: the next batch, or the next epoch's first; all processes stop together
        batch, stopping = next_batch(batches)
        if stopping:
            break
        if batch is None:
            batches = data.start_epoch(loader, step, iters)
            continue
        # the training step (it leaves the losses on the device: reading them would wait for it)
        real_A = batch['A'].to(device, non_blocking=device.type == 'cuda')
        real_B = batch['B'].to(device, non_blocking=device.type == 'cuda')
        loss = train_step(train_nets, opt_G, opt_D, real_A, real_B, args, autocast, scaler)
        step += 1
        if t_last == t0 and not due(step, args.print_freq, total):  # the first iteration warms up
            t_last, step_last = time.time(), step  # (allocations, compiling): timed from here
        # progress: the losses (read only here: a NaN stops the run), speed, time to go
        if due(step, args.print_freq, total):
            losses = read_losses(loss, step, ckpt_path)
        if master and due(step, args.print_freq, total):
            seconds, steps = time.time() - t_last, step - step_last
            ips = steps * args.batch_size * world / seconds
            eta = (total - step) * seconds / steps / 60
            numbers = ' '.join(f"{k} {v:.3f}" for k, v in losses.items())
            print(f"epoch {epoch + 1} iter {step}/{total} | {numbers} | {ips:.1f} img/s | "
                  f"ETA {eta:.1f} min")
            log(log_file, step, dict(epoch=epoch + 1, lr=lr, images_per_s=ips, **losses))
            t_last, step_last = time.time(), step
        # samples: the translations of the fixed held-out images
        if master and due(step, args.display_freq, total):
            path = os.path.join(args.out_dir, f"samples_{step:07d}.png")
            save_samples(nets['G'], fixed['A'].to(device), fixed['B'].to(device), path,
                         args.test_train_mode)
        # evaluation against the held-out truth, and FID: each process its share
        scores = {}
        if held is not None and due(step, args.eval_freq, total):
            scores = evaluate(nets['G'], held, device, args.test_train_mode, features, reals)
        if master and scores:
            print(f"eval at iter {step}: {' '.join(f'{k} {v:.3f}' for k, v in scores.items())}")
            log(log_file, step, scores)
        # save: best.pt at a new lowest FID; ckpt.pt when due
        if scores.get('fid', math.inf) < best_fid:
            best_fid = scores['fid']
            save_run(best_path, args, checkpointed, step, best_fid, device)
        if due(step, args.save_latest_freq, total):
            save_run(ckpt_path, args, checkpointed, step, best_fid, device)

    if stopping and step != start and not due(step, args.save_latest_freq, total):
        save_run(ckpt_path, args, checkpointed, step, best_fid, device)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if master and stopping:
        print(f"interrupted: saved {ckpt_path} at iteration {step}; continue with: "
              f"python {SCRIPT}.py --resume --ckpt {shlex.quote(ckpt_path)}")
    if stopping:
        sys.exit(130)
    if master:
        print(f"done: iterations {start} to {step} of {total} in {(time.time() - t0) / 60:.1f} "
              f"min; {ckpt_path} holds iteration {step}")
    return nets

def main(argv=None):
    try:
        train(*parse_args(argv))
    except data.DataError as e:  # from a loader worker: with the worker's traceback before it
        sys.exit(f"error: {str(e).strip().splitlines()[-1].removeprefix('data.DataError: ')}")
    except KeyboardInterrupt:  # at start-up, before the loop's handler: nothing was trained
        print("interrupted before training", file=sys.stderr)
        sys.exit(130)

if __name__ == '__main__':
    sys.stdout.reconfigure(line_buffering=True)  # progress shows at once, also in a log file
    main()

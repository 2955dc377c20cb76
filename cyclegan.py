"""CycleGAN in one file: unpaired image-to-image translation (Zhu et al., ICCV 2017). G_A: A -> B
and G_B: B -> A (the paper's G, F); D_A tells real B from G_A's fakes, D_B real A from G_B's.

    python cyclegan.py                                  # built-in synthetic task, minutes on a CPU
    python cyclegan.py --dataroot datasets/horse2zebra  # the paper's recipe
    torchrun --standalone --nproc_per_node=8 cyclegan.py --dataroot ...
"""
import argparse, contextlib, datetime, functools, io, json, math, os, shlex, signal, sys
import tempfile, time
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import data

# -----------------------------------------------------------------------------
# config: the official flags keep their names and defaults; the rest are marked "new"

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
    p = ArgumentParser(description='CycleGAN: unpaired image-to-image translation')
    a = p.add_argument
    a('--dataroot', help='folder of trainA, trainB (testA, testB); none: the built-in task')
    a('--netG', default='resnet_9blocks', choices=['resnet_9blocks', 'resnet_6blocks'])
    a('--input_nc', type=int, default=3, choices=[1, 3], help='channels of domain A: 1 gray, 3 RGB')
    a('--output_nc', type=int, default=3, choices=[1, 3], help='channels of domain B')
    a('--ngf', type=NATURAL, default=64, help='generator width (filters in the first conv)')
    a('--ndf', type=NATURAL, default=64, help='discriminator width')
    a('--norm', default='instance', choices=['instance', 'batch', 'none'])
    a('--init_gain', type=FRACTION, default=0.02, help='std of the normal init of the weights')
    a('--gan_mode', default='lsgan', choices=['lsgan', 'vanilla'])
    a('--lambda_A', type=WEIGHT, default=10.0, help='weight of the cycle loss A -> B -> A')
    a('--lambda_B', type=WEIGHT, default=10.0, help='weight of the cycle loss B -> A -> B')
    a('--lambda_identity', type=WEIGHT, default=0.5, help='identity loss, relative to lambda_A/B')
    a('--pool_size', type=COUNT, default=50, help='image replay buffer size; 0 disables it')
    a('--lr', type=FRACTION, default=0.0002)
    a('--beta1', type=bounded(float, 0.0, 1.0), default=0.5, help='Adam beta1')
    a('--n_epochs', type=COUNT, default=100, help='epochs at the initial learning rate')
    a('--n_epochs_decay', type=COUNT, default=100, help='epochs of linear decay to zero')
    a('--batch_size', type=NATURAL, default=1, help='per process')
    a('--load_size', type=NATURAL, default=286, help='resize images to this size ...')
    a('--crop_size', type=NATURAL, default=256, help='... then randomly crop to this size')
    a('--preprocess', default='resize_and_crop',
      choices=['resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop', 'none'])
    a('--no_flip', action='store_true', help='no random horizontal flips')
    a('--serial_batches', action='store_true', help='take images in order instead of shuffled')
    a('--direction', default='AtoB', choices=['AtoB', 'BtoA'], help='BtoA swaps the domains')
    a('--num_threads', type=COUNT, default=4, help='loader processes, at most the CPUs present')
    a('--max_dataset_size', type=NATURAL, default=None, help='at most this many images per domain')
    a('--print_freq', type=NATURAL, default=100, help='iterations between progress lines')
    a('--display_freq', type=NATURAL, default=400, help='iterations between sample grids')
    a('--save_latest_freq', type=NATURAL, default=5000, help='iterations between checkpoints')
    a('--seed', type=bounded(int, 0, 2 ** 63), default=0)
    a('--out_dir', default='out/cyclegan', help='new: checkpoint, samples and log.jsonl go here')
    a('--max_iters', type=COUNT, default=None, help='new: stop after this many iterations')
    a('--eval_freq', type=NATURAL, default=1000, help='new: iterations between evaluations')
    a('--fid', action='store_true', help='new: FID, KID and best.pt (see tools/fid.py)')
    a('--fid_weights', metavar='FILE', help='new: --fid with the FID Inception weights in FILE')
    a('--resume', action='store_true', help='new: continue from --ckpt (default out_dir/ckpt.pt)')
    a('--ckpt', help='new: the checkpoint to write, or with --resume to continue')
    a('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'], help='new')
    a('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
      help='new: autocast precision; auto: the fastest the hardware has (see autocast_dtype)')
    a('--compile', action='store_true', help='new: torch.compile the networks')
    return p

SYNTHETIC_PRESET = dict(netG='resnet_6blocks', ngf=16, ndf=16, crop_size=48, load_size=48,
                        batch_size=2, lr=0.0008, num_threads=0, n_epochs=1, n_epochs_decay=1,
                        print_freq=50, display_freq=250, eval_freq=500, save_latest_freq=500)
SCRIPT = 'cyclegan'
NETWORKS = ['G_A', 'G_B', 'D_A', 'D_B']  # their names in the checkpoint and the official files
# flags a resumed run keeps: the networks, the batch size its position counts in, the direction
FIXED_FLAGS = ['netG', 'ngf', 'ndf', 'norm', 'input_nc', 'output_nc', 'batch_size', 'direction']
MIN_SIDE = 24  # the smallest image the 70x70 PatchGAN takes (three halvings, two 4x4 convolutions)

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

class ResnetBlock(nn.Module):
    """Two 3x3 convolutions added to the input; dropout (pix2pix's option) between them."""
    def __init__(self, dim, norm, bias, dropout=False):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim),
                  nn.ReLU(inplace=True)]
        if dropout:
            layers += [nn.Dropout(0.5)]
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)

class ResnetGenerator(nn.Module):
    """c7s1-64, d128, d256, n_blocks x R256, u128, u64, c7s1-3, tanh (the paper's appendix)."""
    def __init__(self, in_nc=3, out_nc=3, ngf=64, norm='instance', n_blocks=9, dropout=False):
        super().__init__()
        bias = norm == 'instance'  # as the official code: a bias only before instance norm
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, bias=bias), norm_layer(norm, ngf),
                  nn.ReLU(inplace=True)]
        for c in (ngf, 2 * ngf):  # downsample
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(norm, 2 * c),
                       nn.ReLU(inplace=True)]
        layers += [ResnetBlock(ngf * 4, norm, bias=bias, dropout=dropout) for _ in range(n_blocks)]
        for c in (4 * ngf, 2 * ngf):  # upsample
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias),
                       norm_layer(norm, c // 2), nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

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
    """The four networks (D_A judges images of domain B, D_B of A), initialised, and two Adams."""
    n_blocks = 9 if args.netG == 'resnet_9blocks' else 6
    G = functools.partial(ResnetGenerator, ngf=args.ngf, norm=args.norm, n_blocks=n_blocks)
    D = functools.partial(NLayerDiscriminator, ndf=args.ndf, n_layers=3, norm=args.norm)
    init = functools.partial(init_weights, gain=args.init_gain)
    nc_A, nc_B = args.input_nc, args.output_nc  # the channels of each domain's images
    nets = dict(G_A=init(G(nc_A, nc_B)), G_B=init(G(nc_B, nc_A)), D_A=init(D(nc_B)),
                D_B=init(D(nc_A)))
    nets = {name: net.to(device) for name, net in nets.items()}
    adam = functools.partial(torch.optim.Adam, lr=args.lr, betas=(args.beta1, 0.999), fused=True)
    opt_G = adam([*nets['G_A'].parameters(), *nets['G_B'].parameters()])
    opt_D = adam([*nets['D_A'].parameters(), *nets['D_B'].parameters()])
    return nets, opt_G, opt_D

# -----------------------------------------------------------------------------
# losses, the image pool, the training step

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

class ImagePool:
    """The replay buffer (section 4): D learns from a history of fakes, half of them older ones."""
    def __init__(self, size, channels=3, side=None, device='cpu'):
        self.size = size
        self.shape = (channels, side, side)  # side None: images of any size
        self.device = device
        self.images = []

    def query(self, images):
        out = []
        for img in images.detach():  # detached: D's step must not reach into G's graph
            if len(self.images) < self.size:
                self.images.append(img.clone())
            elif self.size > 0 and torch.rand(1).item() < 0.5:  # (the CPU's draws: no wait)
                j = torch.randint(self.size, (1,)).item()
                self.images[j], img = img.clone(), self.images[j]
            out.append(img)
        return torch.stack(out)

    def state_dict(self):
        return [x.cpu() for x in self.images]

    def load_state_dict(self, images):  # a checkpoint's: the same crop (if fixed) and pool size
        if len(images) > self.size or any(self.shape[1] and x.shape != self.shape for x in images):
            raise ValueError("resume with the --crop_size and --pool_size it had")
        self.images = [x.to(self.device) for x in images]

def lr_factor(epoch, n_epochs, n_epochs_decay):
    """The learning rate's multiplier after `epoch` epochs: 1, then a linear decay (official)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1))

def cycle_losses(there, back, D, real, other, lambda_cycle, lambda_idt, args):
    """One cycle (Fig. 3): there(real) fools D (Eq. 1), back returns it (Eq. 2); identity (5.2)."""
    identity = args.lambda_identity > 0  # (keeps colours; weighted as the official code does)
    if identity and args.norm != 'batch' and real.shape == other.shape:  # per-sample norms: exact
        fake, idt = there(torch.cat([real, other])).chunk(2)  # (one call: faster)
    else:
        fake = there(real)
        idt = there(other) if identity else None
    loss_cycle = lambda_cycle * F.l1_loss(back(fake).float(), real)
    loss_G = gan_loss(D(fake), True, args.gan_mode)
    loss_idt = torch.zeros((), device=real.device)
    if identity:
        loss_idt = args.lambda_identity * lambda_idt * F.l1_loss(idt.float(), other)
    return fake, loss_G, loss_cycle, loss_idt

def train_step(nets, opt_G, opt_D, pool_A, pool_B, real_A, real_B, args, autocast, scaler):
    """One iteration of the full objective (Eq. 3): a generator step, then a discriminator step."""
    G_A, G_B, D_A, D_B = nets['G_A'], nets['G_B'], nets['D_A'], nets['D_B']
    # generator step, D frozen: a backward per cycle (23% less peak memory at 256 px than one)
    nn.ModuleList([D_A, D_B]).requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with contextlib.ExitStack() as adding_up:
        for G in (G_A, G_B):  # DDP's under torchrun (compiled or not): this backward only adds up
            if hasattr(G, 'no_sync'):
                adding_up.enter_context(G.no_sync())
        with autocast:  # the forward cycle A -> B -> A, and G_A(B)
            fake_B, loss_G_A, loss_cycle_A, loss_idt_A = cycle_losses(
                G_A, G_B, D_A, real_A, real_B, args.lambda_A, args.lambda_B, args)
        scaler.scale(loss_G_A + loss_cycle_A + loss_idt_A).backward()
    with autocast:  # the backward cycle B -> A -> B, and G_B(A)
        fake_A, loss_G_B, loss_cycle_B, loss_idt_B = cycle_losses(
            G_B, G_A, D_B, real_B, real_A, args.lambda_B, args.lambda_A, args)
    scaler.scale(loss_G_B + loss_cycle_B + loss_idt_B).backward()
    scaler.step(opt_G)
    # discriminator step, on a history of generated images rather than only the latest ones
    nn.ModuleList([D_A, D_B]).requires_grad_(True)
    with autocast:
        older_A, older_B = pool_A.query(fake_A), pool_B.query(fake_B)
        loss_D_A = discriminator_loss(D_A, real_B, older_B, args)
        loss_D_B = discriminator_loss(D_B, real_A, older_A, args)
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_D_A + loss_D_B).backward()
    scaler.step(opt_D)
    scaler.update()
    losses = dict(G_A=loss_G_A, cycle_A=loss_cycle_A, idt_A=loss_idt_A,
                  G_B=loss_G_B, cycle_B=loss_cycle_B, idt_B=loss_idt_B, D_A=loss_D_A, D_B=loss_D_B)
    return {k: v.detach() for k, v in losses.items()}  # on the device: reading them would wait

# -----------------------------------------------------------------------------
# the training loop's helpers: setup, files and checkpoints, data and evaluation, stops

def check_run(args):  # what the networks need of the flags, checked before any work
    if args.crop_size % 4 or args.crop_size < MIN_SIDE:  # (the ResNet's; the discriminator's)
        sys.exit(f"error: --crop_size {args.crop_size} must be a multiple of 4 from {MIN_SIDE} up")
    if args.lambda_identity > 0 and args.input_nc != args.output_nc:  # (G_A(B) takes B)
        sys.exit("error: --lambda_identity needs --input_nc = --output_nc; give 0")
    if 'crop' not in args.preprocess and args.batch_size > 1:
        sys.exit(f"error: --preprocess {args.preprocess} keeps each image's size: --batch_size 1")

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
    train_set = data.Synthetic(args.crop_size, paired=False, train=True, direction=args.direction,
                               channels=(args.input_nc, args.output_nc))
    if args.dataroot is not None:
        tf = data.Transform(args.preprocess, args.load_size, args.crop_size, not args.no_flip,
                            min_side=MIN_SIDE)
        train_set = data.UnpairedFolders(args.dataroot, 'train', tf, args.direction,
                                         args.serial_batches, args.max_dataset_size, args.seed,
                                         (args.input_nc, args.output_nc))
    return data.train_loader(train_set, args.batch_size, args.num_threads, args.seed,
                             not args.serial_batches, rank, world)

def held_out_data(args):
    """The held-out (A, B) items in order: testA/B (else trainA/B), or the built-in task's pairs."""
    channels = (args.input_nc, args.output_nc)
    held = data.Synthetic(args.crop_size, paired=False, train=False, direction=args.direction,
                          channels=channels)
    if args.dataroot is not None:
        test = all(os.path.isdir(os.path.join(args.dataroot, 'test' + d)) for d in 'AB')
        if (args.fid or args.fid_weights) and not test:
            sys.exit(f"error: --fid: {args.dataroot} has no testA and testB for FID")
        tf = data.Transform('resize_and_crop', crop_size=args.crop_size, train=False)
        held = data.UnpairedFolders(args.dataroot, 'test' if test else 'train', tf,
                                    args.direction, serial=True, channels=channels)
    return held

def psnr(x, y):  # peak signal-to-noise ratio in dB of images in [-1, 1], per image
    return 10 * torch.log10(4 / ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-10))

@torch.no_grad()
def evaluate(G_A, G_B, held, device, features=None, reals=None):
    """PSNR against the built-in task's truth; FID and KID against reals; each process its share."""
    scores = {}
    truth = isinstance(held, data.Synthetic)  # (else batch[y] is not x's truth)
    for name, G, x, y in [('AtoB', G_A, 'A', 'B'), ('BtoA', G_B, 'B', 'A')]:
        items = held.domain(x)  # each image of domain x once (the built-in task's: pairs)
        psnrs, fakes = [], []
        G.eval()
        for batch in data.share_loader(items):
            fake = G(batch[x].to(device)).float()
            psnrs.append(psnr(fake, batch[y].to(device)))
            if features is not None:
                fakes.append(features(fake))
        G.train()
        if truth:
            scores[f"psnr_{name}"] = data.gather(torch.cat(psnrs), len(items)).mean().item()
        if features is not None:
            found = features.distances(reals[y], data.gather(torch.cat(fakes), len(items)))
            scores.update({f"{k}_{name}": v for k, v in found.items()})
    return scores

@torch.no_grad()
def save_samples(G_A, G_B, A, B, path):  # rows real_A fake_B rec_A, real_B fake_A rec_B
    generators = nn.ModuleList([G_A, G_B]).eval()  # (batch norm: its running statistics)
    fake_B, fake_A = G_A(A), G_B(B)
    rows = [A, fake_B, G_B(fake_B), B, fake_A, G_A(fake_A)]
    generators.train()
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

def train(args, given):  # trains CycleGAN as args say; returns the four networks by name
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
    # data (the datasets apply --direction); FID's network and the real images' features, once
    loader = make_data(args, rank, world)
    held = held_out_data(args)
    fixed = next(iter(torch.utils.data.DataLoader(held, 4)))  # shown in the samples
    features, reals = None, None
    if args.fid or args.fid_weights:  # every process loads it: a bad file stops them all
        from tools import fid
        features = fid.FeatureNetwork(args.fid_weights or fid.default_weights(), device)
        reals = {k: features.of_dataset(held.domain(k), k) for k in 'AB'}
    nets, opt_G, opt_D = build_model(args, device)
    side = args.crop_size if 'crop' in args.preprocess else None  # (else: of any size)
    pool_A = ImagePool(args.pool_size, args.input_nc, side, device)
    pool_B = ImagePool(args.pool_size, args.output_nc, side, device)
    checkpointed = dict(**nets, opt_G=opt_G, opt_D=opt_D, pool_A=pool_A, pool_B=pool_B)
    # resume; or claim the checkpoint now: an unwritable --ckpt folder fails here, not at the end
    step, best_fid = 0, math.inf
    if ckpt is not None:
        step, best_fid = restore_run(ckpt, checkpointed, ckpt_path, device, rank)
    elif os.path.lexists(best_path):  # (and save_run refuses an existing ckpt_path)
        sys.exit(f"error: {best_path} exists: --resume its run, or give another --out_dir")
    else:
        save_run(ckpt_path, args, checkpointed, step, best_fid, device, replace=False)
    # as the step runs them: DDP under torchrun (averages gradients as the backward runs), compiled
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
    while step < total:
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
        loss = train_step(train_nets, opt_G, opt_D, pool_A, pool_B, real_A, real_B, args,
                          autocast, scaler)
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
            save_samples(nets['G_A'], nets['G_B'], fixed['A'].to(device), fixed['B'].to(device),
                         path)
        # evaluation against the held-out truth (built-in task) and FID: each process its share
        scores = {}
        if (args.dataroot is None or reals) and due(step, args.eval_freq, total):
            scores = evaluate(nets['G_A'], nets['G_B'], held, device, features, reals)
        if master and scores:
            print(f"eval at iter {step}: {' '.join(f'{k} {v:.3f}' for k, v in scores.items())}")
            log(log_file, step, scores)
        # save: best.pt at a new lowest FID (both directions summed); ckpt.pt when due
        fid = sum(v for k, v in scores.items() if k.startswith('fid'))
        if 'fid_AtoB' in scores and fid < best_fid:
            best_fid = fid
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

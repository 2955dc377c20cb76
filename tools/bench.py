"""Times the training of cyclegan.py or pixelgan.py, in one of two ways.

The step (default): that script's train_step on random tensors, built as train() builds it at
the official defaults (256 px, batch 1; the built-in task's preset does not apply), one step's
FLOPs counted (eager), then the median time of --max_iters steps (default 10) after three warm-up
steps, each waited for on CUDA and MPS, as the official figures in the README.

The loop (--loop): the whole iteration as train() runs it, data loading, the stop agreement,
collectives under torchrun and the progress line's sync included. It runs the script's own main()
with those flags in a temporary --out_dir (removed after) for 1 + --max_iters iterations, and
takes the mean of the last --max_iters from its log.jsonl (train() leaves its first out). So it
measures the loop as `python cyclegan.py` with those flags would run it: without --dataroot, the
built-in task and its preset, except for the flags typed. Its samples, evaluation and checkpoint
come after the timed iterations; its output goes to stderr; no FLOPs are counted (mfu: None).

    python tools/bench.py cyclegan --load_size 143 --crop_size 128
    python tools/bench.py pixelgan --netD basic --dtype float32 --compile
    python tools/bench.py cyclegan --loop --max_iters 50
    python tools/bench.py cyclegan --help        # its flags, and bench's own

Prints one figure a line, then all of them as one JSON line, the last line.
"""
import argparse, contextlib, functools, json, os, re, resource, signal, statistics, sys
import tempfile, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.utils.flop_counter
import cyclegan, pixelgan

USAGE = ("usage: python tools/bench.py cyclegan|pixelgan [that script's flags] [--loop] "
         "[--max_iters N]")
SCRIPTS = {'cyclegan': cyclegan, 'pixelgan': pixelgan}
WARMUP = 3  # untimed steps first: allocations, cuDNN's autotuning, compiling
ITERS = 10  # timed iterations when --max_iters is not given

# Dense tensor-core peaks in FLOP/s, from NVIDIA's data sheets (the "with sparsity" figures
# halved), by the math that ran: 'tf32' is float32 convolutions on tensor cores, cuDNN's default
# from Ampere on (torch.backends.cudnn.allow_tf32); 'float32' the plain FP32 units'. The first
# entry whose words all appear in the device name applies.
H100_SXM = dict(bfloat16=989e12, float16=989e12, tf32=494e12, float32=67e12)
NVL = dict(bfloat16=835.5e12, float16=835.5e12, tf32=417.5e12, float32=60e12)
PEAK_FLOPS = [
    (('H100', 'PCIe'), dict(bfloat16=756e12, float16=756e12, tf32=378e12, float32=51e12)),
    (('H100', 'NVL'), NVL),
    (('H200', 'NVL'), NVL),
    (('H100',), H100_SXM),
    (('H200',), H100_SXM),
    (('A100',), dict(bfloat16=312e12, float16=312e12, tf32=156e12, float32=19.5e12)),
    (('L4',), dict(bfloat16=121e12, float16=121e12, tf32=60e12, float32=30e12)),
]

def peak_flops(device_name, math):
    """The dense peak FLOP/s of the GPU named device_name for math (a dtype, or 'tf32'), or None
    off the table (the CPU, MPS, other GPUs)."""
    words = set(re.split(r'[^A-Za-z0-9]+', device_name))  # 'A100-SXM4-80GB'; 'L4' is not 'L40S'
    for names, peaks in PEAK_FLOPS:
        if words.issuperset(names):
            return peaks.get(math)
    return None

def math_kind(dtype, device):  # float32 convolutions run as TF32 on CUDA 8.0+ if cuDNN may
    if dtype == 'float32' and device.type == 'cuda' and torch.backends.cudnn.allow_tf32:
        if torch.cuda.get_device_capability(device)[0] >= 8:
            return 'tf32'
    return dtype

def peak_rss_mib():
    """The process's peak resident set size in MiB: ru_maxrss counts KiB on Linux, bytes on
    macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == 'darwin':
        return peak / 2**20
    return peak / 2**10

def memory_mib(device):  # the memory figure and what it is (MPS keeps no peak, only its total)
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20, 'cuda max allocated'
    if device.type == 'mps':
        return torch.mps.driver_allocated_memory() / 2**20, 'mps current driver-allocated'
    return peak_rss_mib(), 'process peak RSS'

def synchronize(device):  # CUDA and MPS return before the work queued runs: wait for it
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    if device.type == 'mps':
        torch.mps.synchronize()

def median_seconds(step_fn, iters, device):
    """The median time of step_fn over iters steps after WARMUP ones, each waited for."""
    times = []
    for _ in range(WARMUP + iters):
        synchronize(device)
        t = time.perf_counter()
        step_fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[WARMUP:])

def figures(mode, iters, sec, n_images, flops, device, dtype):
    """The results, in the order printed; MFU against the peak of the math that ran."""
    name = device.type
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    math = math_kind(dtype, device)
    peak = peak_flops(name, math)
    flops_per_s, mfu = None, None
    if flops:
        flops_per_s = flops / sec
    if flops and peak:
        mfu = flops_per_s / peak
    mem, memory = memory_mib(device)
    return dict(ms_per_iter=1000 * sec, images_per_s=n_images / sec, flops_per_iter=flops,
                flops_per_s=flops_per_s, peak_mem_mib=mem, memory=memory, mfu=mfu,
                peak_flops=peak, math=math, device=name, dtype=dtype, mode=mode,
                timed_iters=iters)

def report(result):  # one figure a line, then all of them as one JSON line
    for k, v in result.items():
        if isinstance(v, float):
            print(f"{k}: {v:.4g}")
        else:
            print(f"{k}: {v}")
    print(json.dumps(result))
    return result

def random_images(args, channels, device):
    size = (args.batch_size, channels, args.crop_size, args.crop_size)
    return torch.rand(size, device=device) * 2 - 1

def time_step(script, args, iters):
    """Builds what script's train() builds from args, then times its train_step."""
    script.check_run(args)
    rank, world, device, autocast, scaler = script.setup(args)
    nets, opt_G, opt_D = script.build_model(args, device)
    real_A = random_images(args, args.input_nc, device)
    real_B = random_images(args, args.output_nc, device)
    pools = []  # cyclegan's image pools, on the device as train() makes them
    if script is cyclegan:
        pools = [cyclegan.ImagePool(args.pool_size, nc, args.crop_size, device)
                 for nc in (args.input_nc, args.output_nc)]
    step_args = (*pools, real_A, real_B, args, autocast, scaler)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        script.train_step(nets, opt_G, opt_D, *step_args)
    if args.compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}
    step_fn = functools.partial(script.train_step, nets, opt_G, opt_D, *step_args)
    sec = median_seconds(step_fn, iters, device)
    dtype = script.autocast_dtype(args.dtype, device)
    return report(figures('step', iters, sec, args.batch_size * world, counter.get_total_flops(),
                          device, dtype))

def time_loop(script, argv, iters):
    """Runs script's main(argv) for 1 + iters iterations in a temporary folder; times the last
    iters from its log.jsonl, which only rank 0 writes (the other ranks return None)."""
    total = str(1 + iters)  # train() times from the end of its first iteration
    later = str(2 + iters)  # no samples, evaluation or checkpoint inside the timed iterations
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix='bench_') as tmp:
        flags = ['--out_dir', tmp, '--ckpt', os.path.join(tmp, 'ckpt.pt'), '--max_iters', total,
                 '--print_freq', total, '--display_freq', later, '--eval_freq', later,
                 '--save_latest_freq', later]  # after argv: these win
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout: bench's figures only
                script.main([*argv, *flags])
        finally:  # train()'s Ctrl-C and SIGTERM handlers end with it
            for s, handler in handlers.items():
                signal.signal(s, handler)
        if int(os.environ.get('RANK', 0)) > 0:
            return None
        with open(os.path.join(tmp, 'log.jsonl')) as f:
            records = [json.loads(line) for line in f]
    args = records[0]['args']  # as the run had them: the preset's batch size too
    last = [r for r in records if 'images_per_s' in r][-1]
    if last['step'] != 1 + iters:
        sys.exit(f"error: --loop: the run ended at iteration {last['step']} of {total}: its "
                 f"epochs end sooner; give a smaller --max_iters, or more --n_epochs")
    world = int(os.environ.get('WORLD_SIZE', 1))
    sec = args['batch_size'] * world / last['images_per_s']
    device = script.pick_device(args['device'])
    dtype = script.autocast_dtype(args['dtype'], device)
    return report(figures('loop', iters, sec, args['batch_size'] * world, None, device, dtype))

def own_flags(parser):  # bench's flags; its --max_iters replaces the script's
    parser.add_argument('--max_iters', type=cyclegan.COUNT, metavar='N',
                        help=f"iterations timed (default {ITERS})")
    parser.add_argument('--loop', action='store_true',
                        help="time train()'s whole iteration (see python tools/bench.py --help)")
    return parser

def get_parser(script):
    """script's flags and bench's own; typed in full (no abbreviations), as --loop passes on
    what it does not take."""
    p = script.ArgumentParser(prog=f"python tools/bench.py {script.SCRIPT}",
                              description=f"times {script.SCRIPT}.py's training step, or with "
                              f"--loop its training loop; takes its flags, and bench's own",
                              parents=[script.get_parser()], conflict_handler='resolve',
                              add_help=False, allow_abbrev=False)
    own_flags(p.add_argument_group("bench's own flags"))
    return p

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (['-h'], ['--help']):
        print(USAGE)
        print(__doc__)
        return None
    if not argv or argv[0] not in SCRIPTS:
        sys.exit("error: name the script first: python tools/bench.py cyclegan|pixelgan [flags]")
    script = SCRIPTS[argv[0]]
    args = get_parser(script).parse_args(argv[1:])  # the official defaults: no built-in preset
    if args.max_iters == 0:
        sys.exit("error: --max_iters 0: nothing to time; give 1 or more")
    iters = ITERS
    if args.max_iters is not None:
        iters = args.max_iters
    if args.loop and args.resume:
        sys.exit("error: --loop times a new run in a temporary folder; drop --resume")
    if args.loop:
        splitter = own_flags(argparse.ArgumentParser(add_help=False, allow_abbrev=False))
        return time_loop(script, splitter.parse_known_args(argv[1:])[1], iters)  # its flags
    return time_step(script, args, iters)

if __name__ == '__main__':
    main()

"""The training step of cyclegan.py or pixelgan.py, timed on random tensors: what train() builds,
one step's FLOPs counted (eager), then the median time of --max_iters steps (default 10) after
three warm-up steps, as the official figures in the README.

    python tools/bench.py cyclegan --load_size 143 --crop_size 128
    python tools/bench.py pixelgan --netD basic --dtype float32 --compile

Takes that script's flags, at the official defaults (256 px, batch 1); prints one figure a line,
then all as one JSON line.
"""
import functools, json, os, resource, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import torch
import torch.utils.flop_counter
import cyclegan, pixelgan

PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12}  # dense, for MFU

def random_images(args, channels, device):
    size = (args.batch_size, channels, args.crop_size, args.crop_size)
    return torch.rand(size, device=device) * 2 - 1

def report_speed(step_fn, iters, device, n_images, flops, dtype):
    """Times step_fn: the median over iters steps after three warm-up steps."""
    times = []
    for _ in range(3 + iters):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        step_fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times[3:])
    name, peak = 'cpu', None
    peak_mem_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == 'cuda':
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        peak_mem_mib = torch.cuda.max_memory_allocated() / 2**20
    mfu = None
    if peak:
        mfu = flops / sec / peak
    result = dict(ms_per_iter=1000 * sec, images_per_s=n_images / sec, flops_per_iter=flops,
                  flops_per_s=flops / sec, peak_mem_mib=peak_mem_mib, mfu=mfu, device=name,
                  dtype=dtype)
    for k, v in result.items():
        if isinstance(v, float):
            print(f"{k}: {v:.4g}")
        else:
            print(f"{k}: {v}")
    print(json.dumps(result))
    return result

def benchmark(script, argv):
    """Builds what script's train() builds from its flags argv, then times its train_step."""
    args = script.get_parser().parse_args(argv)  # the official defaults: no built-in preset
    script.check_run(args)
    rank, world, device, autocast, scaler = script.setup(args)
    nets, opt_G, opt_D = script.build_model(args, device)
    real_A = random_images(args, args.input_nc, device)
    real_B = random_images(args, args.output_nc, device)
    pools = []  # cyclegan's image pools
    if script is cyclegan:
        pools = [cyclegan.ImagePool(args.pool_size), cyclegan.ImagePool(args.pool_size)]
    step_args = (*pools, real_A, real_B, args, autocast, scaler)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        script.train_step(nets, opt_G, opt_D, *step_args)
    if args.compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}
    step_fn = functools.partial(script.train_step, nets, opt_G, opt_D, *step_args)
    dtype = script.autocast_dtype(args.dtype, device)
    return report_speed(step_fn, args.max_iters or 10, device, args.batch_size * world,
                        counter.get_total_flops(), dtype)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    scripts = {'cyclegan': cyclegan, 'pixelgan': pixelgan}
    if not argv or argv[0] not in scripts:
        sys.exit("error: name the script first: python tools/bench.py cyclegan|pixelgan [flags]")
    return benchmark(scripts[argv[0]], argv[1:])

if __name__ == '__main__':
    main()

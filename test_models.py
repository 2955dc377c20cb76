"""The specification of cyclegan.py, pixelgan.py, data.py and tools/, as tests, in the order of the
scripts: config, networks, losses and the training step, the training loop and resume, data, then
each tool (translate, export, evaluate and FID/KID, bench, download, to_tensorboard), what goes
wrong (the reliability catalogue), and the rules that keep the scripts readable. Small sizes and
widths keep the whole file to a few minutes on two CPU cores; run a part with -k, e.g.
`python -m pytest -q -k export` or `python -m pytest -q -k "resume and not torchrun"`."""
import ast, contextlib, copy, errno, functools, gc, glob, hashlib, http.server, importlib.util
import inspect, io, json, os, pickle, random, runpy, shutil, signal, ssl, subprocess, sys
import tarfile, tempfile
import threading, time, tokenize, traceback, types, urllib.error, warnings, zipfile
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import cyclegan, data, pixelgan
from tools import bench, fid, to_tensorboard
from tools import download as download_tool, evaluate as evaluate_tool
from tools import export as export_tool, generators, translate as translate_tool

ROOT = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# helpers: optional extras, running a script, test images, tiny flags

def needs(*modules, install):
    """Skips a test where an optional extra is absent; the rest of the file runs without it."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f'optional extra: pip install {install}')

needs_torchmetrics = needs('torchmetrics', install='torchmetrics')
needs_fidelity = needs('torchmetrics', 'torch_fidelity', install='torchmetrics torch-fidelity')
needs_onnx = needs('onnx', 'onnxscript', 'onnxruntime', install='onnx onnxscript onnxruntime')
needs_safetensors = needs('safetensors', install='safetensors')
needs_tensorboard = needs('tensorboard', install='tensorboard')

SCRIPTS = {'cyclegan.py': cyclegan, 'pixelgan.py': pixelgan, 'tools/bench.py': bench,
           'tools/download.py': download_tool, 'tools/evaluate.py': evaluate_tool,
           'tools/export.py': export_tool, 'tools/to_tensorboard.py': to_tensorboard,
           'tools/translate.py': translate_tool}

def run(script, *args, check=True, fresh=False, env=None, cwd=None, timeout=300):
    """Runs script (its path in the repository) with args as a user does, in the environment env
    and the folder cwd if given; returns its exit status (.returncode), .stdout, .stderr, and
    both in .out.

    By default its main(argv) runs inside this process: starting Python and torch for each call
    would take longer than most tests, and monkeypatch reaches inside. What sys.exit says goes to
    stderr with status 1, as Python prints it (tools/download.py's __main__ block does the same
    with its DownloadError); an exception is a traceback and status 1; the environment, the
    folder and the signal handlers are restored after. With fresh=True it runs in a new process,
    for at most timeout seconds."""
    argv = [str(a) for a in args]
    if fresh:
        command = [sys.executable, os.path.join(ROOT, script), *argv]
        p = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd,
                           timeout=timeout)
        p.out = p.stdout + p.stderr
        if check:
            assert p.returncode == 0, p.out
        return p
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    stdout, stderr, status = io.StringIO(), io.StringIO(), 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(cwd or saved_cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            SCRIPTS[script].main(argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            stderr.write(e.code + '\n')
    except download_tool.DownloadError as e:
        stderr.write(f'error: {e}\n')
        status = 1
    except Exception:
        stderr.write(traceback.format_exc())
        status = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, h in handlers.items():
            signal.signal(s, h)
        gc.collect()  # closes what the run left open, as its process's end would (the lock)
    p = types.SimpleNamespace(returncode=status, stdout=stdout.getvalue(), stderr=stderr.getvalue())
    p.out = p.stdout + p.stderr
    if check:
        assert p.returncode == 0, p.out
    return p

def one_line(p):
    """The run's only stderr line, after checking that it failed (status 1, no traceback)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and 'Traceback' not in p.out, p.out
    return lines[0]

def torchrun(*args, timeout=300):
    """cyclegan.py under torchrun: two CPU processes with gloo."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.join(ROOT, 'cyclegan.py'), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

def wait_until(ready, child, what, timeout=120):
    """Polls ready() while the child process runs. Fails with the child's output if it ends
    first, or if timeout seconds pass (then it is killed): a wait never hangs the suite."""
    deadline = time.monotonic() + timeout
    while not ready():
        ended = child.poll() is not None
        if ended or time.monotonic() > deadline:
            child.kill()
            output = child.communicate(timeout=60)[0]
            why = f'{timeout} s passed'
            if ended:
                why = f'the child ended with status {child.returncode}'
            pytest.fail(f'waiting for {what}: {why}; its output:\n{output}')
        time.sleep(0.05)

def read_log(out_dir):
    """The records of out_dir/log.jsonl."""
    return [json.loads(line) for line in (out_dir / 'log.jsonl').read_text().splitlines()]

def log_lines(out_dir):
    """How many lines out_dir/log.jsonl has so far (0 before it exists)."""
    log = out_dir / 'log.jsonl'
    if not log.exists():
        return 0
    return len(log.read_text().splitlines())

def count(net):
    """The number of parameters of net."""
    return sum(p.numel() for p in net.parameters())

def save_image(path, size=(40, 32), mode='RGB', seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(arr)
    if mode == 'I;16':
        img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    elif mode != 'RGB':
        img = img.convert(mode)
    img.save(path)

def save_gray(path, size=40, seed=0, bits=16):
    arr = np.random.default_rng(seed).integers(0, 2 ** bits, (size, size))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint16 if bits == 16 else np.uint8)).save(path)

def make_unpaired(root, n=3, size=40):
    for d in ('trainA', 'trainB', 'testA', 'testB'):
        for i in range(n):
            save_image(str(root / d / f'{i}.png'), size=(size, size), seed=hash(d) % 1000 + i)

# the scripts end to end at tiny widths and sizes (without --dataroot: the built-in tasks)
TINY_CYCLEGAN = ['--crop_size', 32, '--load_size', 32, '--ngf', 4, '--ndf', 4, '--num_threads', 0,
                 '--print_freq', 2, '--display_freq', 2, '--eval_freq', 4, '--save_latest_freq', 2]
TINY_PIXELGAN = ['--netG', 'unet_128', '--crop_size', 128, '--load_size', 128, '--ngf', 4,
                 '--ndf', 4, '--num_threads', 0, '--print_freq', 2, '--display_freq', 2,
                 '--eval_freq', 4, '--save_latest_freq', 2]

@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
    """A tiny CycleGAN and a tiny U-Net-128 pix2pix checkpoint (one iteration each, built-in
    tasks), shared by the tests that only read them."""
    tmp = tmp_path_factory.mktemp('runs')
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp / 'c')
    run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 1, '--out_dir', tmp / 'p')
    return tmp / 'c' / 'ckpt.pt', tmp / 'p' / 'ckpt.pt'


def copied_run(tmp_path, ckpt, name='run'):
    """A copy of a tiny run's checkpoint in tmp_path/name, so that the shared one stays as it is."""
    (tmp_path / name).mkdir()
    shutil.copy(ckpt, tmp_path / name / 'ckpt.pt')
    return tmp_path / name / 'ckpt.pt'

def tiny_flags(script):
    """The tiny training flags of script."""
    return TINY_CYCLEGAN if script == 'cyclegan.py' else TINY_PIXELGAN

def files_of(folder):
    """Each file under folder (recursively, links not followed) and its bytes."""
    found = {}
    for d, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(d, name)
            found[os.path.relpath(path, folder)] = open(path, 'rb').read()
    return found

@contextlib.contextmanager
def deadline(seconds, what):
    """Fails what runs inside with TimeoutError after seconds (SIGALRM): a hang fails the test."""
    def expire(signum, frame):
        raise TimeoutError(f'{what} took over {seconds} s')
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

def interrupted(script, args, tmp_path, ready):
    """script in a new process, sent SIGINT once ready(stderr so far) holds; its status, stdout
    and stderr."""
    out, err = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    command = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    with open(out, 'w') as stdout, open(err, 'w') as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        wait_until(lambda: ready(err.read_text()), child, f'{script} to start working')
        child.send_signal(signal.SIGINT)
        status = child.wait(timeout=120)
    return status, out.read_text(), err.read_text()

def only_error_line(stderr):
    """stderr's one line besides notes (a note: --fid_weights that is not the published file)."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith('note: ')]
    assert len(lines) == 1 and 'Traceback' not in stderr, stderr
    return lines[0]


# -----------------------------------------------------------------------------
# config: the flags, how they are parsed, and the checks on their values

@pytest.mark.parametrize('script, flags, says', [
    (cyclegan, ['--batch_size', '0'], '--batch_size: must be at least 1, not 0'),
    (cyclegan, ['--crop_size', '0'], '--crop_size: must be at least 1, not 0'),
    (cyclegan, ['--lr', '-1'], '--lr: must be above 0.0 and below 1.0, not -1'),
    (cyclegan, ['--lr', 'inf'], '--lr: must be above 0.0 and below 1.0, not inf'),
    (pixelgan, ['--init_gain', '1e300'], '--init_gain: must be above 0.0 and below 1.0, not 1e300'),
    (cyclegan, ['--seed', str(2 ** 64)],
     f'--seed: must be at least 0 and below {2 ** 63}, not {2 ** 64}'),
    (cyclegan, ['--lambda_A', 'nan'], '--lambda_A: must be at least 0.0, not nan'),
    (pixelgan, ['--beta1', '2'], '--beta1: must be at least 0.0 and below 1.0, not 2'),
    (cyclegan, ['--pool_size', '-1'], '--pool_size: must be at least 0, not -1'),
    (pixelgan, ['--ngf', '0'], '--ngf: must be at least 1, not 0'),
    (pixelgan, ['--ngf', '1.5'], "--ngf: invalid int value: '1.5'"),
    (cyclegan, ['--num_threads', '-1'], '--num_threads: must be at least 0, not -1'),
    (pixelgan, ['--print_freq', '0'], '--print_freq: must be at least 1, not 0'),
    (cyclegan, ['--save_latest_freq', '0'], '--save_latest_freq: must be at least 1, not 0'),
    (pixelgan, ['--eval_freq', '0'], '--eval_freq: must be at least 1, not 0'),
    (pixelgan, ['--lambda_L1', '-5'], '--lambda_L1: must be at least 0.0, not -5'),
    (cyclegan, ['--max_iters', '-1'], '--max_iters: must be at least 0, not -1'),
])
def test_every_numeric_flag_is_checked_before_any_work(script, flags, says):
    with pytest.raises(SystemExit) as e:
        script.parse_args(flags)
    assert e.value.code == f'error: argument {says}; --help lists the flags'

def test_a_wrong_choice_is_one_line():
    line = one_line(run('cyclegan.py', '--netG', 'resnet_99blocks', check=False))
    assert 'resnet_6blocks' in line
    assert line.startswith("error: argument --netG: invalid choice: 'resnet_99blocks'")

def test_an_absent_device_is_one_line_naming_the_present_ones():
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    p = run('cyclegan.py', '--device', 'cuda', '--max_iters', 1, check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "error: --device cuda: not present here (present: cpu)"]

def test_identity_loss_needs_as_many_channels_in_both_domains(tmp_path):
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--input_nc', 1, '--out_dir', tmp_path, check=False)
    assert '--lambda_identity needs --input_nc = --output_nc' in one_line(p)
    run('cyclegan.py', *TINY_CYCLEGAN, '--input_nc', 1, '--lambda_identity', 0, '--max_iters', 1,
        '--out_dir', tmp_path)  # the synthetic task, A in grayscale: colourisation
    assert (tmp_path / 'ckpt.pt').exists()

# -----------------------------------------------------------------------------
# networks: the official layouts, parameter counts and state_dict keys, and the same outputs

@pytest.mark.parametrize('make, params, keys', [
    (lambda: cyclegan.ResnetGenerator(norm='instance', n_blocks=9), 11_378_179, 48),
    (lambda: cyclegan.ResnetGenerator(norm='batch', n_blocks=9), 11_383_427, 140),
    (lambda: cyclegan.ResnetGenerator(norm='instance', n_blocks=6), 7_837_699, 36),
    (lambda: cyclegan.NLayerDiscriminator(3, norm='instance'), 2_764_737, 10),
    (lambda: pixelgan.PixelDiscriminator(3, norm='instance'), 8_705, 6),
    (lambda: pixelgan.PixelDiscriminator(3, norm='batch'), 8_832, 9),
    (lambda: pixelgan.UnetGenerator(num_downs=8, norm='batch'), 54_413_955, 82),
    (lambda: pixelgan.UnetGenerator(num_downs=8, norm='instance'), 54_409_603, 32),
    (lambda: pixelgan.UnetGenerator(num_downs=7, norm='batch'), 41_828_995, 70),
    (lambda: pixelgan.NLayerDiscriminator(6, norm='batch'), 2_768_705, 22),
    (lambda: pixelgan.PixelDiscriminator(6, norm='batch'), 9_024, 9),
    (lambda: pixelgan.PixelDiscriminator(6, norm='instance'), 8_897, 6),
])
def test_parameter_counts_and_state_dict_keys_match_the_official_networks(make, params, keys):
    net = make()
    assert count(net) == params
    assert len(net.state_dict()) == keys

@pytest.mark.parametrize('n_layers, params', [(1, 139_585), (2, 666_433), (4, 6_964_033),
                                              (5, 11_159_361)])
def test_n_layer_discriminator_counts(n_layers, params):
    assert count(pixelgan.NLayerDiscriminator(6, n_layers=n_layers, norm='batch')) == params

def test_official_key_names():
    G = cyclegan.ResnetGenerator(norm='instance')
    assert {'model.1.weight', 'model.10.conv_block.1.weight', 'model.10.conv_block.5.weight',
            'model.19.weight', 'model.22.weight', 'model.26.bias'} <= set(G.state_dict())
    U = pixelgan.UnetGenerator(num_downs=8, ngf=4)
    assert {'model.model.0.weight', 'model.model.1.model.1.weight',
            'model.model.3.bias'} <= set(U.state_dict())
    D = pixelgan.NLayerDiscriminator(ndf=4, norm='batch')
    assert {'model.0.weight', 'model.2.weight', 'model.3.weight',
            'model.11.weight'} <= set(D.state_dict())

@pytest.mark.parametrize('netD, n_layers, side', [
    ('basic', 3, 30), ('n_layers', 1, 126), ('n_layers', 2, 62), ('n_layers', 4, 14),
    ('n_layers', 5, 6), ('pixel', 3, 256)])
def test_discriminator_output_shapes_on_256(netD, n_layers, side):
    args, _ = pixelgan.parse_args(['--dataroot', 'x', '--netD', netD, '--n_layers_D', str(n_layers),
                                   '--ndf', '4', '--ngf', '4'])
    D = pixelgan.build_model(args, torch.device('cpu'))[0]['D']
    assert D(torch.zeros(1, 6, 256, 256)).shape == (1, 1, side, side)

@pytest.mark.parametrize('netD, n_layers, field', [('pixel', 3, 1), ('n_layers', 1, 16),
                                                   ('basic', 3, 70)])
def test_discriminator_receptive_fields_measured_by_gradient(netD, n_layers, field):
    args, _ = pixelgan.parse_args(['--dataroot', 'x', '--netD', netD, '--n_layers_D', str(n_layers),
                                   '--ndf', '4', '--ngf', '4', '--norm', 'none'])
    D = pixelgan.build_model(args, torch.device('cpu'))[0]['D']
    x = torch.randn(1, 6, 160, 160, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum((0, 1)), as_tuple=True)
    assert rows.max() - rows.min() + 1 == field and cols.max() - cols.min() + 1 == field

def test_generators_keep_the_input_size():
    resnet = cyclegan.ResnetGenerator(ngf=4, n_blocks=6)
    assert resnet(torch.zeros(1, 3, 36, 52)).shape == (1, 3, 36, 52)
    unet = pixelgan.UnetGenerator(num_downs=7, ngf=4)
    assert unet(torch.zeros(2, 3, 128, 256)).shape == (2, 3, 128, 256)
    with pytest.raises(RuntimeError):  # 7 downsamplings of 64 pixels: no pixel left at the bottom
        unet(torch.zeros(2, 3, 64, 64))

def test_init_is_normal_0_02():
    torch.manual_seed(0)
    args, _ = cyclegan.parse_args(['--dataroot', 'x', '--norm', 'batch'])
    G = cyclegan.build_model(args, torch.device('cpu'))[0]['G_A']
    w = G.model[4].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert abs(G.model[5].weight.mean().item() - 1) < 0.01 and G.model[5].bias.abs().sum() == 0

def official_resnet_state_dict(ngf=4, n_blocks=6, gen=None):
    """Keys and shapes of the official ResNet generator (instance norm), random weights."""
    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.1
    sd = {'model.1.weight': r(ngf, 3, 7, 7), 'model.1.bias': r(ngf),
          'model.4.weight': r(2 * ngf, ngf, 3, 3), 'model.4.bias': r(2 * ngf),
          'model.7.weight': r(4 * ngf, 2 * ngf, 3, 3), 'model.7.bias': r(4 * ngf)}
    for b in range(10, 10 + n_blocks):
        for i in (1, 5):
            sd[f'model.{b}.conv_block.{i}.weight'] = r(4 * ngf, 4 * ngf, 3, 3)
            sd[f'model.{b}.conv_block.{i}.bias'] = r(4 * ngf)
    u = 10 + n_blocks
    sd.update({f'model.{u}.weight': r(4 * ngf, 2 * ngf, 3, 3), f'model.{u}.bias': r(2 * ngf),
               f'model.{u + 3}.weight': r(2 * ngf, ngf, 3, 3), f'model.{u + 3}.bias': r(ngf),
               f'model.{u + 7}.weight': r(3, ngf, 7, 7), f'model.{u + 7}.bias': r(3)})
    return sd

def official_resnet_forward(sd, x, n_blocks):
    """The official ResNet generator written out as plain functions, layer by layer."""
    def pad(x, p):
        return F.pad(x, (p,) * 4, mode='reflect')
    def conv(x, k, **kw):
        return F.conv2d(x, sd[k + '.weight'], sd[k + '.bias'], **kw)
    def up(x, k):
        return F.conv_transpose2d(x, sd[k + '.weight'], sd[k + '.bias'], stride=2, padding=1,
                                  output_padding=1)
    x = F.relu(F.instance_norm(conv(pad(x, 3), 'model.1')))
    x = F.relu(F.instance_norm(conv(x, 'model.4', stride=2, padding=1)))
    x = F.relu(F.instance_norm(conv(x, 'model.7', stride=2, padding=1)))
    for b in range(10, 10 + n_blocks):
        y = F.relu(F.instance_norm(conv(pad(x, 1), f'model.{b}.conv_block.1')))
        x = x + F.instance_norm(conv(pad(y, 1), f'model.{b}.conv_block.5'))
    u = 10 + n_blocks
    x = F.relu(F.instance_norm(up(x, f'model.{u}')))
    x = F.relu(F.instance_norm(up(x, f'model.{u + 3}')))
    return torch.tanh(conv(pad(x, 3), f'model.{u + 7}'))

def official_unet_state_dict(ngf=4, num_downs=7, gen=None):
    """Keys and shapes of the official U-Net with batch norm, random weights and running stats."""
    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.1
    def bn(k, c):
        return {f'{k}.weight': 1 + r(c), f'{k}.bias': r(c), f'{k}.running_mean': r(c),
                f'{k}.running_var': 1 + r(c).abs(), f'{k}.num_batches_tracked': torch.tensor(1)}
    widths = [ngf * min(2 ** i, 8) for i in range(num_downs)]  # 64, 128, 256, 512, 512, ...
    sd = {'model.model.0.weight': r(widths[0], 3, 4, 4),
          'model.model.3.weight': r(2 * widths[0], 3, 4, 4), 'model.model.3.bias': r(3)}
    p = 'model.model.1.model.'
    for level in range(1, num_downs):
        outer, inner = widths[level - 1], widths[level]
        sd[p + '1.weight'] = r(inner, outer, 4, 4)
        if level == num_downs - 1:  # innermost
            sd[p + '3.weight'] = r(inner, outer, 4, 4)
            sd.update(bn(p + '4', outer))
        else:
            sd.update(bn(p + '2', inner))
            sd[p + '5.weight'] = r(2 * inner, outer, 4, 4)
            sd.update(bn(p + '6', outer))
            p += '3.model.'
    return sd

def official_unet_forward(sd, x, num_downs):
    """The official U-Net in eval mode as plain functions. Its in-place LeakyReLU makes each skip
    connection carry LeakyReLU(x), not x."""
    def bn(x, k):
        return F.batch_norm(x, sd[k + '.running_mean'], sd[k + '.running_var'],
                            sd[k + '.weight'], sd[k + '.bias'])
    def down(x, k):
        return F.conv2d(F.leaky_relu(x, 0.2), sd[k + '.weight'], stride=2, padding=1)
    def up(x, k):
        return F.conv_transpose2d(F.relu(x), sd[k + '.weight'], stride=2, padding=1)
    def level(x, p, depth):
        if depth == num_downs - 1:
            y = bn(up(down(x, p + '1'), p + '3'), p + '4')
        else:
            inner = level(bn(down(x, p + '1'), p + '2'), p + '3.model.', depth + 1)
            y = bn(up(inner, p + '5'), p + '6')
        return torch.cat([F.leaky_relu(x, 0.2), y], 1)
    y = level(F.conv2d(x, sd['model.model.0.weight'], stride=2, padding=1),
              'model.model.1.model.', 1)
    out = F.conv_transpose2d(F.relu(y), sd['model.model.3.weight'], sd['model.model.3.bias'],
                             stride=2, padding=1)
    return torch.tanh(out)

def test_resnet_generator_computes_what_the_official_one_does():
    sd = official_resnet_state_dict(gen=torch.Generator().manual_seed(0))
    G = cyclegan.ResnetGenerator(ngf=4, n_blocks=6)
    G.load_state_dict(sd)  # strict: exactly the official keys and shapes
    x = torch.randn(2, 3, 32, 36)
    torch.testing.assert_close(G(x), official_resnet_forward(sd, x, 6), rtol=1e-4, atol=1e-5)

def test_unet_generator_computes_what_the_official_one_does():
    sd = official_unet_state_dict(gen=torch.Generator().manual_seed(0))
    G = pixelgan.UnetGenerator(num_downs=7, ngf=4, norm='batch')
    G.load_state_dict(sd)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(G.eval()(x), official_unet_forward(sd, x, 7), rtol=1e-4,
                                   atol=1e-5)

# -----------------------------------------------------------------------------
# losses, the image pool, the schedule, and the training step

def test_gan_losses():
    pred = torch.tensor([[0.0, 2.0]])
    assert cyclegan.gan_loss(pred, True, 'lsgan').item() == pytest.approx((1 + 1) / 2)
    assert cyclegan.gan_loss(pred, False, 'lsgan').item() == pytest.approx((0 + 4) / 2)
    vanilla = F.softplus(-pred).mean().item()
    assert cyclegan.gan_loss(pred, True, 'vanilla').item() == pytest.approx(vanilla)

def test_image_pool_semantics():
    torch.manual_seed(0)
    assert torch.equal(cyclegan.ImagePool(0).query(torch.ones(2, 1)), torch.ones(2, 1))
    pool = cyclegan.ImagePool(4)
    first = torch.arange(4.0)[:, None]
    assert torch.equal(pool.query(first), first)  # filling up: images come straight back
    assert len(pool.images) == 4
    returned_old = 0
    for i in range(200):
        new = torch.tensor([[100.0 + i]])
        before = torch.stack(pool.images).flatten().tolist()
        out = pool.query(new).item()
        assert len(pool.images) == 4
        if out != new.item():  # an old image came back, and the new one took its place
            assert out in before and new.item() in torch.stack(pool.images).flatten().tolist()
            returned_old += 1
    assert 70 < returned_old < 130  # probability one half

def test_learning_rate_schedule_boundaries():
    def f(epoch):
        return cyclegan.lr_factor(epoch, 100, 100)
    assert f(0) == f(98) == 1.0
    assert f(99) == 1.0  # the last constant epoch
    assert f(100) == pytest.approx(1 - 1 / 101)
    assert f(199) == pytest.approx(1 / 101)
    factors = [pixelgan.lr_factor(e, 1, 2) for e in range(3)]
    assert factors == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]

def test_one_batched_call_equals_separate_calls_with_instance_norm():
    """With per-sample norms a cycle runs real and the identity image through G in one call, and
    D sees real and fake in one call: the same as separate calls."""
    torch.manual_seed(0)
    G_A = cyclegan.ResnetGenerator(ngf=4, n_blocks=2)
    G_B = cyclegan.ResnetGenerator(ngf=4, n_blocks=2)
    D = cyclegan.NLayerDiscriminator(ndf=4)
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    args, _ = cyclegan.parse_args(['--dataroot', 'x'])  # instance norm, identity 0.5, lsgan
    fake, loss_G, loss_cycle, loss_idt = cyclegan.cycle_losses(G_A, G_B, D, A, B, 10.0, 10.0, args)
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-5)
    close(fake, G_A(A))
    close(loss_G, cyclegan.gan_loss(D(G_A(A)), True, 'lsgan'))
    close(loss_cycle, 10.0 * F.l1_loss(G_B(G_A(A)), A))
    close(loss_idt, 0.5 * 10.0 * F.l1_loss(G_A(B), B))
    separate = copy.copy(args)
    separate.norm = 'batch'  # (D's own norm stays instance: only the calls differ)
    one_call = cyclegan.discriminator_loss(D, A, B, args)
    close(one_call, cyclegan.discriminator_loss(D, A, B, separate))

def test_generator_step_follows_the_full_objective_in_one_piece():
    """train_step runs a backward per cycle; the generators' gradients are those of the paper's
    Eq. 3."""
    torch.manual_seed(0)
    args, _ = cyclegan.parse_args(['--dataroot', 'x', '--ngf', '4', '--ndf', '4',
                                   '--pool_size', '0'])
    nets = list(cyclegan.build_model(args, torch.device('cpu'))[0].values())  # G_A, G_B, D_A, D_B
    G_A, G_B, D_A, D_B = copy.deepcopy(nets)  # the reference, before the step changes the weights
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    fake_B, fake_A = G_A(A), G_B(B)
    gan = (F.mse_loss(D_A(fake_B), torch.ones_like(D_A(fake_B)))
           + F.mse_loss(D_B(fake_A), torch.ones_like(D_B(fake_A))))
    cycle = 10 * F.l1_loss(G_B(fake_B), A) + 10 * F.l1_loss(G_A(fake_A), B)  # lambda_A, lambda_B 10
    identity = 0.5 * 10 * F.l1_loss(G_A(B), B) + 0.5 * 10 * F.l1_loss(G_B(A), A)  # lambda_identity
    objective = gan + cycle + identity
    objective.backward()
    opt_G = torch.optim.Adam([*nets[0].parameters(), *nets[1].parameters()])
    opt_D = torch.optim.Adam([*nets[2].parameters(), *nets[3].parameters()])
    pool = cyclegan.ImagePool(0)
    losses = cyclegan.train_step(dict(zip(cyclegan.NETWORKS, nets)), opt_G, opt_D, pool, pool, A, B,
                                 args, contextlib.nullcontext(),
                                 torch.amp.GradScaler('cpu', enabled=False))
    G_terms = ('G_A', 'G_B', 'cycle_A', 'cycle_B', 'idt_A', 'idt_B')
    assert sum(losses[k] for k in G_terms).item() == pytest.approx(objective.item())
    ours = [*nets[0].parameters(), *nets[1].parameters()]
    for p, ref in zip(ours, [*G_A.parameters(), *G_B.parameters()]):
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-3, atol=1e-5)

@pytest.mark.parametrize('netD', ['pixel', 'basic'])
def test_pixelgan_step_follows_the_papers_objective_d_first_then_g(netD):
    """pix2pix's Eq. 4 in the official order: D's step on real and generated pairs (its loss
    halved), then G's step against the D just updated, its GAN term plus lambda_L1 times L1. The
    gradients that train_step leaves on both networks are those of the objective by hand."""
    torch.manual_seed(0)
    # a large --lr: G's step against D before or after D's update differ clearly
    args, _ = pixelgan.parse_args(['--dataroot', 'x', '--netG', 'unet_128', '--netD', netD,
                                   '--ngf', '4', '--ndf', '4', '--norm', 'instance',
                                   '--no_dropout', '--lr', '0.05'])
    assert args.gan_mode == 'vanilla' and args.lambda_L1 == 100
    nets, opt_G, opt_D = pixelgan.build_model(args, torch.device('cpu'))
    G, D = copy.deepcopy(nets['G']), copy.deepcopy(nets['D'])  # as they are before the step
    A, B = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    bce = F.binary_cross_entropy_with_logits
    # D's step: 0.5 * [BCE(D(A, B), real) + BCE(D(A, G(A)), fake)], G's output taken as given
    pred_real = D(torch.cat([A, B], 1))
    pred_fake = D(torch.cat([A, G(A).detach()], 1))
    loss_D = 0.5 * (bce(pred_real, torch.ones_like(pred_real))
                    + bce(pred_fake, torch.zeros_like(pred_fake)))
    loss_D.backward()
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    losses = pixelgan.train_step(nets, opt_G, opt_D, A, B, args, contextlib.nullcontext(), scaler)
    # G's step: BCE(D'(A, G(A)), real) + 100 * L1(G(A), B), with D' = D after its own update
    D_updated = copy.deepcopy(nets['D'])
    assert not all(torch.equal(a, b) for a, b in zip(D_updated.parameters(), D.parameters()))
    fake_B = G(A)
    pred = D_updated(torch.cat([A, fake_B], 1))
    loss_G_GAN = bce(pred, torch.ones_like(pred))
    loss_G_L1 = 100 * F.l1_loss(fake_B, B)
    (loss_G_GAN + loss_G_L1).backward()
    for name, ours in (('D', loss_D), ('G_GAN', loss_G_GAN), ('G_L1', loss_G_L1)):
        assert losses[name].item() == pytest.approx(ours.item(), rel=1e-3, abs=1e-5), name
    for p, ref in zip(nets['G'].parameters(), G.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-3, atol=1e-5)
    for p, ref in zip(nets['D'].parameters(), D.parameters()):  # D's step's: G's leaves them
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-3, atol=1e-5)
    assert all(p.requires_grad for p in nets['D'].parameters())  # D is trainable again

# -----------------------------------------------------------------------------
# the training loop: end-to-end runs, logs, evaluation during training

def test_cyclegan_trains_resumes_and_translates(tmp_path):
    out = tmp_path / 'out'
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 4, '--out_dir', out)
    assert f"parameters: G_A {count(cyclegan.ResnetGenerator(ngf=4, n_blocks=6))}, G_B" in p.out
    assert 'built-in synthetic task' in p.out and 'psnr_AtoB' in p.out and 'psnr_BtoA' in p.out
    log = read_log(out)
    assert log[0]['step'] == 0 and log[0]['args']['ngf'] == 4  # the run's flags open its log
    assert {'step', 'lr', 'images_per_s', 'G_A', 'cycle_A', 'idt_B', 'D_A'} <= set(log[1])
    assert log[1]['step'] == 2
    assert any('psnr_BtoA' in r for r in log)
    assert (out / 'samples_0000004.png').exists() and not (out / 'ckpt.pt.tmp').exists()
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 4
    assert {'G_A', 'G_B', 'D_A', 'D_B', 'opt_G', 'opt_D', 'pool_A', 'pool_B', 'rng', 'best_fid',
            'args'} <= set(ckpt)

    p = run('cyclegan.py', '--resume', '--out_dir', out, '--max_iters', 6)
    assert 'from iteration 4' in p.out
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 6

    photos = tmp_path / 'photos'
    save_image(str(photos / 'a.jpg'), size=(37, 23))
    save_image(str(photos / 'nested' / 'b.png'), size=(50, 41), mode='L')
    for direction in ('AtoB', 'BtoA'):
        res = tmp_path / f'res_{direction}'
        run('tools/translate.py', photos, '--ckpt', out / 'ckpt.pt', '--results_dir', res,
            '--direction', direction)
        assert Image.open(res / 'a.png').size == (37, 23)
        assert Image.open(res / 'nested' / 'b.png').size == (50, 41)
    a = np.asarray(Image.open(tmp_path / 'res_AtoB' / 'a.png'))
    b = np.asarray(Image.open(tmp_path / 'res_BtoA' / 'a.png'))
    assert not np.array_equal(a, b)  # BtoA really uses the other generator

def test_pixelgan_trains_resumes_translates_and_evaluates(tmp_path):
    out = tmp_path / 'out'
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 4, '--out_dir', out, '--netD', 'pixel')
    assert (f"parameters: G {count(pixelgan.UnetGenerator(num_downs=7, ngf=4))}, "
            f"D {count(pixelgan.PixelDiscriminator(6, ndf=4, norm='batch'))}") in p.out
    assert 'psnr_input' in p.out and (out / 'samples_0000004.png').exists()
    log = read_log(out)
    assert {'G_GAN', 'G_L1', 'D', 'lr'} <= set(log[1]) and any('psnr' in r for r in log)
    p = run('pixelgan.py', '--resume', '--out_dir', out, '--max_iters', 6)
    assert 'from iteration 4' in p.out
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 6

    save_image(str(tmp_path / 'in' / 'odd.png'), size=(100, 70))
    run('tools/translate.py', tmp_path / 'in' / 'odd.png', '--ckpt', out / 'ckpt.pt',
        '--results_dir', tmp_path / 'res')
    assert Image.open(tmp_path / 'res' / 'odd.png').size == (100, 70)

    p = run('tools/evaluate.py', '--ckpt', out / 'ckpt.pt')
    scores = json.loads(p.stdout.splitlines()[-1])
    assert {'l1', 'psnr', 'l1_input', 'psnr_input'} <= set(scores)
    assert f"psnr {scores['psnr']:.4f}" in p.out

def test_pixelgan_on_a_paired_folder_dataset(tmp_path):
    for phase, n in (('train', 2), ('val', 2)):
        for i in range(n):
            save_image(str(tmp_path / 'A' / phase / f'{i}.png'), size=(140, 140), seed=i)
            save_image(str(tmp_path / 'B' / phase / f'{i}.png'), size=(140, 140), seed=i + 5)
    p = run('pixelgan.py', '--dataroot', tmp_path, *TINY_PIXELGAN, '--max_iters', 2,
            '--out_dir', tmp_path / 'o', '--direction', 'BtoA', '--netD', 'n_layers',
            '--n_layers_D', 1, '--load_size', 140)
    assert 'eval at iter 2' in p.out and 'psnr' in p.out

def test_one_channel_unpaired_and_paired_data_train_and_translate_end_to_end(tmp_path):
    for d in ('trainA', 'trainB', 'testA', 'testB'):
        for i in range(2):
            save_gray(str(tmp_path / 'unpaired' / d / f'{i}.png'), seed=hash(d) % 100 + i)
    for phase in ('train', 'val'):
        for i in range(2):
            save_gray(str(tmp_path / 'paired' / 'A' / phase / f'{i}.png'), size=140, seed=i)
            save_gray(str(tmp_path / 'paired' / 'B' / phase / f'{i}.png'), size=140, seed=i + 7,
                      bits=8)
    one_channel = ['--input_nc', 1, '--output_nc', 1, '--max_iters', 2]
    run('cyclegan.py', '--dataroot', tmp_path / 'unpaired', *TINY_CYCLEGAN, '--load_size', 36,
        *one_channel, '--out_dir', tmp_path / 'c')
    run('pixelgan.py', '--dataroot', tmp_path / 'paired', *TINY_PIXELGAN, '--load_size', 140,
        *one_channel, '--out_dir', tmp_path / 'p')
    cyclegan_ckpt = torch.load(tmp_path / 'c' / 'ckpt.pt', weights_only=True)
    assert cyclegan_ckpt['G_A']['model.1.weight'].shape[1] == 1
    pixelgan_ckpt = torch.load(tmp_path / 'p' / 'ckpt.pt', weights_only=True)
    assert pixelgan_ckpt['D']['net.0.weight'].shape[1] == 2  # input + output
    save_gray(str(tmp_path / 'scans' / 'x.png'), size=50)
    for out in ('c', 'p'):
        run('tools/translate.py', tmp_path / 'scans', '--ckpt', tmp_path / out / 'ckpt.pt',
            '--results_dir', tmp_path / f'results_{out}')
        result = Image.open(tmp_path / f'results_{out}' / 'x.png')
        assert result.mode == 'L' and result.size == (50, 50)  # 8-bit grayscale, as tools read it

def test_held_out_images_of_one_domain_only_still_train(tmp_path):
    make_unpaired(tmp_path / 'data')
    shutil.rmtree(tmp_path / 'data' / 'testB')
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36,
        '--max_iters', 2, '--out_dir', tmp_path / 'o')
    assert (tmp_path / 'o' / 'samples_0000002.png').exists()

def test_max_iters_0_trains_nothing_and_says_so_truly(tmp_path):
    """A run claims its checkpoint as it starts (its untrained weights, iteration 0), so that a
    folder it cannot write fails before training; the last line says what it holds."""
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 0, '--out_dir', tmp_path)
    assert p.out.splitlines()[-1] == (f"done: iterations 0 to 0 of 0 in 0.0 min; "
                                      f"{tmp_path / 'ckpt.pt'} holds iteration 0")
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 0
    p = run('pixelgan.py', '--resume', '--out_dir', tmp_path, '--max_iters', 0)
    assert 'done: iterations 0 to 0 of 0' in p.out

def test_the_first_progress_line_leaves_out_the_first_iterations_warm_up(tmp_path, monkeypatch):
    """Speed and ETA are timed from the end of the first iteration, which allocations or
    --compile make slow. On a fake clock the first step takes 30 s and each other one 2 s, so
    the numbers are exact, whatever the machine's load."""
    clock = [1000.0]
    real_step = cyclegan.train_step
    def step_on_the_fake_clock(*args):
        first = clock[0] == 1000.0
        clock[0] += 30 if first else 2
        return real_step(*args)
    def now():
        return clock[0]
    monkeypatch.setattr(cyclegan, 'time', types.SimpleNamespace(time=now))
    monkeypatch.setattr(cyclegan, 'train_step', step_on_the_fake_clock)
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 8, '--print_freq', 4,
            '--display_freq', 100, '--out_dir', tmp_path)
    log = read_log(tmp_path)
    batch = log[0]['args']['batch_size']
    progress = [r for r in log if 'images_per_s' in r]
    assert [r['step'] for r in progress] == [4, 8]
    # iterations 2 to 4 in 6 s; counting the first, 4 in 36 s would give a third of it
    assert progress[0]['images_per_s'] == pytest.approx(3 * batch / 6)
    assert progress[1]['images_per_s'] == pytest.approx(4 * batch / 8)  # then every 4 in 8 s
    first_line = next(line for line in p.stdout.splitlines() if 'iter 4/8' in line)
    assert first_line.endswith('ETA 0.1 min')  # 4 more at 2 s; with the first counted: 0.6 min

def test_pixelgan_eval_mode_is_deterministic_and_paper_mode_is_not():
    torch.manual_seed(0)
    G, x = pixelgan.UnetGenerator(num_downs=7, ngf=4), torch.randn(2, 3, 128, 128)
    G(x)  # one training-mode pass fills the batch norm running statistics
    stats, rng = G.model.model[1].model[2].running_mean.clone(), torch.get_rng_state()
    with torch.no_grad(), pixelgan.test_mode(G, train_mode=False) as G_test:
        assert torch.equal(G_test(x), G_test(x))
    with torch.no_grad(), pixelgan.test_mode(G, train_mode=True) as G_test:
        assert not torch.equal(G_test(x), G_test(x))  # dropout stays on, as in the paper
    assert G.training  # and the training state is untouched: mode, batch statistics, RNG
    assert torch.equal(G.model.model[1].model[2].running_mean, stats)
    assert torch.equal(torch.get_rng_state(), rng)


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (aten._local_scalar_dense: .item(),
    bool(), float() of a tensor), except while paused."""
    def __init__(self):
        super().__init__()
        self.count = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._local_scalar_dense and not self.paused:
            self.count += 1
        return func(*args, **(kwargs or {}))

def host_reads(monkeypatch, script, *args):
    """The host reads of a run of script, less those of the image pool's own CPU draws."""
    reads = HostReads()
    query = cyclegan.ImagePool.query

    def query_unseen(pool, images):
        reads.paused = True
        try:
            return query(pool, images)
        finally:
            reads.paused = False

    monkeypatch.setattr(cyclegan.ImagePool, 'query', query_unseen)
    with reads:
        run(script, *args)
    monkeypatch.setattr(cyclegan.ImagePool, 'query', query)
    return reads.count

@pytest.mark.parametrize('script, tiny', [('cyclegan.py', TINY_CYCLEGAN),
                                          ('pixelgan.py', TINY_PIXELGAN)])
def test_twenty_more_iterations_read_from_the_host_at_most_twenty_more_times(
        tmp_path, monkeypatch, script, tiny):
    """Nothing happens between the progress lines (every 20) but training steps: a step that
    read a loss or a flag from the device would wait for it on every iteration."""
    quiet = ['--print_freq', 20, '--display_freq', 1000, '--eval_freq', 1000,
             '--save_latest_freq', 1000, '--dtype', 'float32', '--batch_size', 1]
    if script == 'cyclegan.py':  # (the smallest side its discriminator takes)
        quiet += ['--crop_size', 24, '--load_size', 24]
    counts = {}
    for iters in (21, 41):
        counts[iters] = host_reads(monkeypatch, script, *tiny, *quiet, '--max_iters', iters,
                                   '--out_dir', tmp_path / f'run{iters}')
    print(f"\n{script}: host reads {counts[21]} in 21 iterations, {counts[41]} in 41")
    assert counts[41] - counts[21] <= 20, counts

@pytest.mark.parametrize('script, preprocess, tuned', [
    (cyclegan, 'resize_and_crop', True),
    (cyclegan, 'crop', True),
    (cyclegan, 'scale_width_and_crop', True),
    (cyclegan, 'scale_width', False),
    (cyclegan, 'none', False),
    (pixelgan, 'resize_and_crop', True),
    (pixelgan, 'crop', True),
    (pixelgan, 'scale_width_and_crop', True),
])
def test_setup_turns_cudnn_benchmark_on_for_crops_and_off_otherwise(monkeypatch, script,
                                                                   preprocess, tuned):
    monkeypatch.delenv('RANK', raising=False)  # (no process group)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', not tuned)  # restored after
    args, _ = script.parse_args(['--preprocess', preprocess, '--device', 'cpu',
                                 '--dtype', 'float32'])
    with torch.random.fork_rng():
        script.setup(args)
    assert torch.backends.cudnn.benchmark is tuned


# -----------------------------------------------------------------------------
# resume: the same weights as an uninterrupted run, refusals, checkpoints never replaced

@pytest.mark.parametrize('workers', [0, 1])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, workers):
    make_unpaired(tmp_path / 'data')  # 3 images: 6 iterations cross epochs and the lr decay
    common = ['--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--num_threads', workers,
              '--pool_size', 2, '--n_epochs', 1, '--n_epochs_decay', 2, '--load_size', 36]
    run('cyclegan.py', *common, '--max_iters', 6, '--out_dir', tmp_path / 'straight')
    run('cyclegan.py', *common, '--max_iters', 3, '--out_dir', tmp_path / 'resumed')
    run('cyclegan.py', '--resume', '--max_iters', 6, '--out_dir', tmp_path / 'resumed')
    a = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'resumed' / 'ckpt.pt', weights_only=True)
    lrs = [r['lr'] for r in read_log(tmp_path / 'straight') if 'lr' in r]
    # steps 2, 4, 6: the decay starts with epoch 2
    assert lrs == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 * 2 / 3])
    assert a['step'] == b['step'] == 6  # the end of the 2nd epoch
    for k in ('G_A', 'G_B', 'D_A', 'D_B'):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), (k, name)
    assert all(torch.equal(x, y) for x, y in zip(a['pool_A'], b['pool_A']))

def test_an_evaluation_at_the_end_of_a_run_leaves_resume_exact(tmp_path):
    """An evaluation's loader must not draw from the training's random stream, or a run stopped
    where it evaluated would resume differently from an uninterrupted one (the image pool)."""
    common = [*TINY_CYCLEGAN, '--pool_size', 2, '--eval_freq', 4]
    run('cyclegan.py', *common, '--max_iters', 6, '--out_dir', tmp_path / 'straight')
    # stopped at 3, where it evaluates (its last iteration), then resumed
    run('cyclegan.py', *common, '--max_iters', 3, '--out_dir', tmp_path / 'resumed')
    run('cyclegan.py', '--resume', '--max_iters', 6, '--out_dir', tmp_path / 'resumed')
    a = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'resumed' / 'ckpt.pt', weights_only=True)
    for name in cyclegan.NETWORKS:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name

def test_resume_refuses_another_architecture_or_script(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--batch_size', 1, '--max_iters', 1, '--out_dir', tmp_path)
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path, '--ngf', 8, '--norm', 'batch',
            '--batch_size', 2, check=False)
    assert p.returncode == 1 and '--ngf 8 (checkpoint: 4)' in p.out
    assert '--norm batch (checkpoint: instance)' in p.out
    assert '--batch_size 2 (checkpoint: 1)' in p.out  # the position in the epoch counts in batches
    assert 'Traceback' not in p.out
    with pytest.raises(SystemExit, match='is a cyclegan.py checkpoint; use cyclegan.py'):
        pixelgan.resume_args(pixelgan.parse_args(['--resume'])[1], str(tmp_path / 'ckpt.pt'))
    with pytest.raises(SystemExit, match='nothing.pt: not a loadable weights file'):
        cyclegan.resume_args(cyclegan.parse_args(['--resume'])[1], str(tmp_path / 'nothing.pt'))

def test_dtype_auto_is_decided_anew_on_the_machine_that_resumes(tmp_path, monkeypatch):
    """A run started with --dtype auto on a CPU without fast bfloat16 trains in float32; resumed
    on one with it (AVX-512 BF16), it trains on in bfloat16: the checkpoint keeps 'auto', not
    what auto became on the first machine."""
    used = []  # (autocast on, its dtype) at each training step
    real_step = cyclegan.train_step
    def recording_step(*args):
        autocast = args[8]
        with autocast:
            used.append((torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')))
        return real_step(*args)
    monkeypatch.setattr(cyclegan, 'train_step', recording_step)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False)  # the first machine
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['args']['dtype'] == 'auto'
    assert [enabled for enabled, _ in used] == [False]  # float32: autocast off
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True)  # the second machine
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path, '--max_iters', 2)
    assert 'from iteration 1' in p.out
    assert used[1] == (True, torch.bfloat16)
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 2 and ckpt['args']['dtype'] == 'auto'

def test_a_new_run_never_replaces_an_earlier_run_or_a_given_file(tmp_path):
    """A new run refuses an --out_dir that holds an earlier run's log (its samples and log would
    be overwritten and appended to, even with its --ckpt elsewhere), and a --ckpt that exists."""
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path / 'run')
    earlier = {f: (tmp_path / 'run' / f).read_bytes() for f in os.listdir(tmp_path / 'run')}
    torch.save(official_resnet_state_dict(), tmp_path / 'pretrained.pth')
    pretrained = (tmp_path / 'pretrained.pth').read_bytes()
    log = tmp_path / 'run' / 'log.jsonl'
    cases = [([], f"error: {log} holds an earlier run's log: --resume it"),
             (['--ckpt', tmp_path / 'elsewhere.pt'], f"error: {log} holds an earlier run's log"),
             (['--out_dir', tmp_path / 'new', '--ckpt', tmp_path / 'pretrained.pth'],
              f"error: {tmp_path / 'pretrained.pth'} exists; it is not replaced")]
    for extra, says in cases:
        p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path / 'run',
                *extra, check=False)
        assert one_line(p).startswith(says)
    assert {f: (tmp_path / 'run' / f).read_bytes() for f in os.listdir(tmp_path / 'run')} == earlier
    assert (tmp_path / 'pretrained.pth').read_bytes() == pretrained
    assert not (tmp_path / 'elsewhere.pt').exists()


def test_resume_refuses_another_direction_and_leaves_the_checkpoint(tmp_path, tiny_runs):
    ckpt = copied_run(tmp_path, tiny_runs[0])
    before = ckpt.read_bytes()
    p = run('cyclegan.py', '--resume', '--out_dir', ckpt.parent, '--direction', 'BtoA',
            '--max_iters', 2, check=False)
    assert '--direction BtoA (checkpoint: AtoB)' in one_line(p)
    assert ckpt.read_bytes() == before
    assert 'iter' not in p.stdout

DAMAGED = [  # (name, how the checkpoint is damaged, what the one line names)
    ('args_a_list', lambda c: {**c, 'args': list(c['args'].items())}, 'args'),
    ('no_best_fid', lambda c: {k: v for k, v in c.items() if k != 'best_fid'}, 'best_fid'),
    ('rng_of_floats', lambda c: {**c, 'rng': [{'cpu': torch.zeros(3)}]}, 'rng'),
    ('rng_a_string', lambda c: {**c, 'rng': 'state'}, 'rng'),
    ('rng_empty', lambda c: {**c, 'rng': []}, 'rng'),
    ('step_a_string', lambda c: {**c, 'step': str(c['step'])}, 'step'),
    ('crop_size_a_word', lambda c: {**c, 'args': {**c['args'], 'crop_size': 'big'}}, '--crop_size'),
    ('lr_nan', lambda c: {**c, 'args': {**c['args'], 'lr': float('nan')}}, '--lr'),
]

@pytest.mark.parametrize('script', ['cyclegan.py', 'pixelgan.py'])
@pytest.mark.parametrize('name, damage, names', DAMAGED, ids=[d[0] for d in DAMAGED])
def test_resuming_a_checkpoint_with_one_bad_field_is_one_line_naming_it(
        tmp_path, tiny_runs, script, name, damage, names):
    ckpt = copied_run(tmp_path, tiny_runs[script == 'pixelgan.py'])
    torch.save(damage(torch.load(ckpt, weights_only=True)), ckpt)
    before = ckpt.read_bytes()
    p = run(script, '--resume', '--out_dir', ckpt.parent, '--max_iters', 2, check=False)
    line = one_line(p)
    assert str(ckpt) in line and names in line
    assert 'iter' not in p.stdout
    assert ckpt.read_bytes() == before

def test_resume_with_a_smaller_crop_than_the_pool_holds_says_to_keep_the_crop_size(tmp_path):
    make_unpaired(tmp_path / 'data', n=2)
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--netG', 'resnet_6blocks',
        '--pool_size', 1, '--max_iters', 1, '--out_dir', tmp_path / 'run')
    ckpt = tmp_path / 'run' / 'ckpt.pt'
    assert len(torch.load(ckpt, weights_only=True)['pool_A']) == 1  # the pool holds an image
    before = ckpt.read_bytes()
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / 'run', '--crop_size', 24,
            '--max_iters', 4, check=False)
    line = one_line(p)
    assert 'pool_A' in line and '--crop_size' in line and 'it had' in line
    assert ckpt.read_bytes() == before


# -----------------------------------------------------------------------------
# two processes: data parallelism on the CPU with gloo, as torch.multiprocessing and torchrun
# launch it

def _ddp_worker(rank, script, argv, port, out):
    """One process of two: train() itself, for the networks it returns."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    module = {'cyclegan': cyclegan, 'pixelgan': pixelgan}[script]
    nets = module.train(*module.parse_args(argv))
    torch.save([n.state_dict() for n in nets.values()], os.path.join(out, f'rank{rank}.pt'))

@pytest.mark.parametrize('script, tiny', [('cyclegan', TINY_CYCLEGAN), ('pixelgan', TINY_PIXELGAN)])
def test_two_processes_train_in_lockstep_and_reproducibly(tmp_path, script, tiny):
    finals = []
    for trial in range(2):  # (a thread per process: 2 processes of 2 threads on 2 cores crawl)
        out = tmp_path / f'run{trial}'
        out.mkdir()
        argv = [str(v) for v in tiny] + ['--max_iters', '3', '--out_dir', str(out / 'train'),
                                         '--eval_freq', '100']
        port = 29500 + os.getpid() % 1000 + trial
        workers = mp.spawn(_ddp_worker, args=(script, argv, port, str(out)), nprocs=2, join=False)
        deadline = time.monotonic() + 300
        while not workers.join(timeout=1):  # (a worker that fails raises here)
            if time.monotonic() > deadline:
                for process in workers.processes:
                    process.kill()
                pytest.fail('the two processes did not finish in 300 s')
        r0, r1 = (torch.load(out / f'rank{r}.pt', weights_only=True) for r in (0, 1))
        # every optimizer step used both ranks' gradients (batch norm running statistics stay
        # per rank)
        for a, b in zip(r0, r1):
            assert all(torch.equal(a[k], b[k]) for k in a if 'running_' not in k)
        samples = [f'samples_{i:07d}.png' for i in (2, 3)]
        assert sorted(os.listdir(out / 'train')) == ['ckpt.pt', 'log.jsonl'] + samples
        finals.append(r0)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(*finals) for k in a)

def test_torchrun_launch(tmp_path):
    p = torchrun(*TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('parameters: G_A') == 1  # rank 0 alone prints
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2

def test_torchrun_evaluates_on_every_process_with_the_scores_of_one(tmp_path):
    """Under torchrun every process translates its share of the held-out images and computes
    their features; the scores gathered are those a single process gets from the checkpoint."""
    weights = inception_weights(tmp_path / 'inception.pth')
    make_unpaired(tmp_path / 'data', n=3)  # 3 images on 2 processes: the shares are uneven
    p = torchrun('--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36,
                 '--max_iters', 2, '--eval_freq', 2, '--fid_weights', weights,
                 '--out_dir', tmp_path / 'o')
    assert p.returncode == 0, p.stderr
    evals = [r for r in read_log(tmp_path / 'o') if 'fid_AtoB' in r]
    assert [r['step'] for r in evals] == [2] and (tmp_path / 'o' / 'best.pt').exists()
    assert torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] == 2
    alone = run('tools/evaluate.py', '--ckpt', tmp_path / 'o' / 'ckpt.pt', '--fid_weights', weights)
    scores = json.loads(alone.stdout.splitlines()[-1])
    for k in ('fid_AtoB', 'kid_AtoB', 'fid_BtoA', 'kid_BtoA'):
        assert scores[k] == pytest.approx(evals[0][k], rel=1e-4), k

def test_torchrun_a_file_broken_on_one_process_ends_every_process(tmp_path):
    make_unpaired(tmp_path / 'data', n=4)
    bad = tmp_path / 'data' / 'trainA' / '3.png'
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])  # found only when loaded
    p = torchrun('--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36,
                 '--max_iters', 8, '--out_dir', tmp_path / 'o')
    assert p.returncode != 0 and f"error: {bad}: cannot read image" in p.stderr
    if (tmp_path / 'o' / 'ckpt.pt').exists():  # the last checkpoint saved, whole
        assert torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] in (0, 2, 4, 6)


def descendants(root):
    """root and every process below it."""
    children = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found

def rank_processes(root, rank):
    """The processes under root that run cyclegan.py as the given rank: its main process and
    its loader workers (forked: the same environment and command line)."""
    pids = []
    for pid in descendants(root):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        if f'RANK={rank}'.encode() in environ and b'cyclegan.py' in cmdline:
            pids.append(pid)
    return pids

def gone(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return True
    return state in ('Z', 'X')

def progress_logged(out_dir):
    return log_lines(out_dir) > 0 and any('epoch' in r for r in read_log(out_dir))

@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_torchrun_sigterm_to_one_process_and_its_loader_workers_stops_both_saved(tmp_path):
    make_unpaired(tmp_path / 'data', n=8)
    out = tmp_path / 'o'
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               '--nproc_per_node=2', '--log-dir', str(tmp_path / 'logs'), '--tee', '3',
               os.path.join(ROOT, 'cyclegan.py'), '--dataroot', str(tmp_path / 'data'),
               *map(str, TINY_CYCLEGAN), '--load_size', '36', '--num_threads', '2',
               '--max_iters', '100000', '--save_latest_freq', '100000',
               '--display_freq', '100000', '--eval_freq', '100000', '--out_dir', str(out)]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        wait_until(lambda: progress_logged(out), p, 'a progress line', timeout=180)
        per_rank = 1 + min(2, len(os.sched_getaffinity(0)))  # the main process, its workers
        wait_until(lambda: len(rank_processes(p.pid, 1)) == per_rank, p, "rank 1's workers")
        stopped = rank_processes(p.pid, 1)
        survivors = rank_processes(p.pid, 0)
        assert len(survivors) == per_rank
        for pid in stopped:
            os.kill(pid, signal.SIGTERM)
        output = p.communicate(timeout=180)[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in stopped + survivors) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in stopped + survivors)
    said = [line for line in output.splitlines() if 'interrupted: saved' in line]
    assert len(said) == 1, output
    step = int(said[0].split(' at iteration ')[1].split(';')[0])
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == step
    assert step >= max(r['step'] for r in read_log(out) if 'epoch' in r)
    rank_logs = glob.glob(str(tmp_path / 'logs' / '**' / '*.log'), recursive=True)
    assert len(rank_logs) == 4  # stdout and stderr of each rank
    for path in rank_logs:
        with open(path) as f:
            assert 'Traceback' not in f.read(), path


# -----------------------------------------------------------------------------
# data (data.py): image files, transforms, datasets, the sampler, the synthetic tasks

def test_every_supported_format_loads_as_rgb(tmp_path):
    kinds = {'a.jpg': 'RGB', 'b.JPEG': 'L', 'c.png': 'RGBA', 'd.PNG': 'P', 'e.ppm': 'RGB',
             'f.bmp': 'RGB', 'g.tif': 'CMYK', 'h.tiff': 'RGB', 'sub/i.png': 'I;16', 'j.png': 'LA'}
    for i, (name, mode) in enumerate(kinds.items()):
        save_image(str(tmp_path / 'trainA' / name), mode=mode, seed=i)
    (tmp_path / 'trainA' / 'notes.txt').write_text('not an image')
    save_image(str(tmp_path / 'trainB' / 'x.png'))
    ds = data.UnpairedFolders(str(tmp_path), 'train', data.Transform('resize_and_crop', 36, 32),
                              seed=0)
    assert len(ds.A) == len(kinds) and len(ds) == len(kinds)  # recursive, any case, text ignored
    for i in range(len(ds)):
        item = ds[i]
        assert item['A'].shape == item['B'].shape == (3, 32, 32)
        assert -1 <= item['A'].min() and item['A'].max() <= 1
    big = data.load_image(str(tmp_path / 'trainA' / 'sub' / 'i.png'))
    assert big.mode == 'RGB' and np.asarray(big).max() > 200  # 16-bit rescaled, not clipped white

def test_images_come_in_as_a_viewer_shows_them(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # 'rotate 90 degrees clockwise to display'
    Image.fromarray(arr).save(tmp_path / 'phone.jpg', exif=exif)
    upright = np.asarray(data.load_image(str(tmp_path / 'phone.jpg')))
    assert upright.shape == (40, 20, 3) and upright[:20].mean() > 200 and upright[20:].mean() < 50
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode='F').save(tmp_path / 'float.tif')
    Image.fromarray((ramp * 1000).astype(np.int32), mode='I').save(tmp_path / 'int32.tif')
    for name, top in (('float.tif', 255), ('int32.tif', round(1000 / 257))):
        img = np.asarray(data.load_image(str(tmp_path / name)))
        assert img.min() == 0 and img.max() == top, name  # by the value range, not black or white
    Image.fromarray((ramp * -5).astype(np.float32), mode='F').save(tmp_path / 'negative.tif')
    with pytest.raises(data.DataError, match='negative.tif: pixel values from -5 to 0'):
        data.load_image(str(tmp_path / 'negative.tif'))

def test_integer_images_scale_by_their_bit_depth_not_by_their_values(tmp_path):
    dark = np.full((8, 8), 250, dtype=np.uint16)
    bright = dark.copy()
    bright[0, 0] = 60000
    Image.fromarray(dark).save(tmp_path / 'dark.png')
    Image.fromarray(bright).save(tmp_path / 'bright.png')
    Image.fromarray(dark.astype(np.int32), mode='I').save(tmp_path / 'dark32.tif')
    for name in ('dark.png', 'bright.png', 'dark32.tif'):
        gray = np.asarray(data.load_image(str(tmp_path / name), channels=1))
        assert gray[4, 4] == pytest.approx(250 / 65535), name  # 0.0038 in every file, not 0.98
        rgb = np.asarray(data.load_image(str(tmp_path / name), channels=3))
        assert (rgb[4, 4] == round(250 / 65535 * 255)).all(), name
    floats = np.full((8, 8), 0.25, dtype=np.float32)
    Image.fromarray(floats, mode='F').save(tmp_path / 'float.tif')  # floats alone: by their range
    gray = np.asarray(data.load_image(str(tmp_path / 'float.tif'), channels=1))
    assert gray[4, 4] == pytest.approx(0.25)

def test_16_bit_grayscale_keeps_its_precision_into_the_network(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 4096 levels
    Image.fromarray(ramp).save(tmp_path / 'mri.png')
    image = data.load_image(str(tmp_path / 'mri.png'), channels=1)
    x = data.Transform('none', train=False)([image], None)[0]
    assert x.shape == (1, 64, 64) and len(x.unique()) == 4096
    torch.testing.assert_close(x[0], torch.from_numpy(ramp / 65535.0 * 2 - 1).float())

def test_crop_larger_than_image_is_an_error_at_startup(tmp_path):
    save_image(str(tmp_path / 'trainA' / 'small.png'), size=(20, 20))
    save_image(str(tmp_path / 'trainB' / 'ok.png'), size=(64, 64))
    with pytest.raises(data.DataError, match='small.png.*smaller than --crop_size 32'):
        data.UnpairedFolders(str(tmp_path), 'train', data.Transform('crop', crop_size=32))
    with pytest.raises(data.DataError, match='--crop_size 64 is larger than --load_size 32'):
        data.Transform('resize_and_crop', 32, 64)
    ds = data.UnpairedFolders(str(tmp_path), 'train', data.Transform('resize_and_crop', 36, 32))
    assert ds[0]['A'].shape == (3, 32, 32)

def test_scale_width_gives_sides_the_networks_take():
    img = Image.new('RGB', (50, 37))
    out, = data.Transform('scale_width', load_size=30, crop_size=30)([img], random.Random(0))
    assert out.shape == (3, 24, 32)  # 30 wide -> 32, and 37 * 30 / 50 = 22.2 high -> 24

def test_unpaired_epoch_is_max_of_domains_with_b_random_or_serial(tmp_path):
    for i in range(5):
        save_image(str(tmp_path / 'trainA' / f'{i}.png'), seed=i)
    for i in range(2):
        save_image(str(tmp_path / 'trainB' / f'{i}.png'), seed=10 + i)
    tf = data.Transform('none', train=False)
    ds = data.UnpairedFolders(str(tmp_path), 'train', tf, serial=True)
    assert len(ds) == 5
    assert torch.equal(ds[3]['B'], ds[1]['B'])  # in order, wrapping around
    def picks(seed):
        """Which B image each index gets in epochs 0 to 7 (the images differ in their sums)."""
        ds = data.UnpairedFolders(str(tmp_path), 'train', tf, serial=False, seed=seed)
        chosen = []
        for epoch in range(8):  # (an item is asked for as (epoch, index), as the sampler gives it)
            chosen.append([ds[epoch, i]['B'].sum().item() for i in range(len(ds))])
        return chosen
    first = picks(1)
    assert picks(1) == first  # random, but the same for the same (seed, epoch, index)
    assert picks(2) != first  # and another seed draws otherwise
    assert len({epoch[4] for epoch in first}) == 2  # drawn anew each epoch

def test_paired_side_by_side_gets_identical_crops_and_flips(tmp_path):
    half = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    os.makedirs(tmp_path / 'train', exist_ok=True)
    for i in range(3):
        side_by_side = np.concatenate([half, half, half[:, :1]], 1)  # an odd width
        Image.fromarray(side_by_side).save(tmp_path / 'train' / f'{i}.png')
    tf = data.Transform('resize_and_crop', 40, 24)
    ds = data.PairedFolders(str(tmp_path), 'train', tf, seed=0)
    crops = set()
    for epoch in range(4):
        for i in range(3):
            item = ds[epoch, i]
            assert item['A'].shape == (3, 24, 24) and torch.equal(item['A'], item['B'])
            crops.add(item['A'].sum().item())
    assert len(crops) > 3  # the crops really are random

def test_paired_folders_match_by_name_and_swap_with_direction(tmp_path):
    for name, seed in [('x', 1), ('y', 2)]:
        save_image(str(tmp_path / 'A' / 'train' / f'{name}.png'), seed=seed)
        save_image(str(tmp_path / 'B' / 'train' / f'{name}.jpg'), seed=seed + 10)
    tf = data.Transform('none', train=False)
    ab = data.PairedFolders(str(tmp_path), 'train', tf)
    ba = data.PairedFolders(str(tmp_path), 'train', tf, direction='BtoA')
    assert torch.equal(ab[1]['A'], ba[1]['B']) and torch.equal(ab[1]['B'], ba[1]['A'])
    save_image(str(tmp_path / 'A' / 'train' / 'z.png'))
    with pytest.raises(data.DataError, match='z.png: no image of the same name'):
        data.PairedFolders(str(tmp_path), 'train', tf)

@pytest.mark.parametrize('case', ['missing', 'empty', 'zero_bytes', 'truncated', 'not_an_image'])
def test_broken_data_is_one_clear_error_naming_the_path(tmp_path, case):
    save_image(str(tmp_path / 'trainB' / 'ok.png'))
    (tmp_path / 'trainA').mkdir()
    bad = tmp_path / 'trainA' / 'bad.jpg'
    if case == 'zero_bytes':
        bad.write_bytes(b'')
    elif case == 'truncated':
        save_image(str(bad), size=(64, 64))
        bad.write_bytes(bad.read_bytes()[:300])
    elif case == 'not_an_image':
        bad.write_text('hello')
    elif case == 'missing':
        (tmp_path / 'trainA').rmdir()
    tf = data.Transform('resize_and_crop', 36, 32)
    with pytest.raises(data.DataError) as e:
        data.UnpairedFolders(str(tmp_path), 'train', tf)[0]
    assert str(tmp_path / 'trainA') in str(e.value) and '\n' not in str(e.value)

def test_too_few_images_for_a_batch_is_an_error(tmp_path):
    make_unpaired(tmp_path, n=2)
    p = run('cyclegan.py', '--dataroot', tmp_path, '--batch_size', 4, '--out_dir', tmp_path / 'o',
            '--num_threads', 0, check=False)
    assert '2 training images make no batch of --batch_size 4' in one_line(p)

def test_sampler_shards_reshuffles_and_resumes():
    """The sampler gives (epoch, index) items, so that loader workers that live from epoch to
    epoch (persistent) still draw each item's crop and flip from its own epoch."""
    def indices(sampler):
        return [i for _, i in sampler]
    shards = [indices(data.EpochSampler(range(10), 3, r, seed=0)) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    s = data.EpochSampler(range(10), 1, 0, seed=0)
    epoch0 = indices(s)
    s.epoch = 1
    assert sorted(indices(s)) == list(range(10)) and indices(s) != epoch0
    assert {epoch for epoch, _ in s} == {1}
    full = indices(s)
    s.start = 4
    assert indices(s) == full[4:] and len(s) == 6

def test_synthetic_datasets_are_deterministic_with_hidden_truth():
    test = data.Synthetic(32, paired=False, train=False)
    a, b = test[3]['A'], test[3]['B']
    assert torch.equal(a, data.Synthetic(32, paired=False, train=False)[3]['A'])
    assert not torch.equal(a, b) and (a - b).abs().max() > 0.5  # stripes, not a colour shift
    same = (a == b).all(0)
    assert 0.2 < same.float().mean() < 0.95  # the background is shared, the objects differ
    paired = data.Synthetic(32, paired=True, train=False)[0]
    assert paired['A'].shape == paired['B'].shape == (3, 32, 32)
    assert cyclegan.psnr(paired['A'][None], paired['B'][None]).item() < 25


@pytest.mark.parametrize('size, preprocess', [((1, 1), 'none'), ((300, 2), 'scale_width')])
def test_an_image_too_small_for_the_networks_is_one_line_naming_it_at_start(
        tmp_path, size, preprocess):
    make_unpaired(tmp_path / 'data', n=2)
    odd = tmp_path / 'data' / 'trainB' / 'odd.png'
    save_image(str(odd), size=size)
    before = files_of(tmp_path / 'data')
    p = run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--preprocess',
            preprocess, '--batch_size', 1, '--max_iters', 2, '--out_dir', tmp_path / 'o',
            check=False)
    assert str(odd) in one_line(p)
    assert 'iter' not in p.stdout
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()
    assert files_of(tmp_path / 'data') == before

def test_a_fifo_among_the_images_is_skipped_by_training_and_translate(tmp_path):
    make_unpaired(tmp_path / 'data', n=2)
    for d in ('trainA', 'testA'):
        os.mkfifo(tmp_path / 'data' / d / 'pipe.png')
    with deadline(60, 'training beside a FIFO'):
        run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--netG',
            'resnet_6blocks', '--max_iters', 1, '--out_dir', tmp_path / 'o')
    with deadline(60, 'translating beside a FIFO'):
        run('tools/translate.py', tmp_path / 'data' / 'trainA', '--ckpt',
            tmp_path / 'o' / 'ckpt.pt', '--results_dir', tmp_path / 'r')
    assert sorted(os.listdir(tmp_path / 'r')) == ['0.png', '1.png']
    with deadline(60, 'translating a FIFO'):
        p = run('tools/translate.py', tmp_path / 'data' / 'trainA' / 'pipe.png', '--ckpt',
                tmp_path / 'o' / 'ckpt.pt', '--results_dir', tmp_path / 'r2', check=False)
    assert p.returncode == 1
    assert 'pipe.png' in only_error_line(p.stderr)


# -----------------------------------------------------------------------------
# tools/translate.py: which generator a file holds, official files, images in and out

def test_translate_direction_follows_the_direction_trained(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path,
        '--direction', 'BtoA')
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    for direction, key in (('BtoA', 'G_A'), ('AtoB', 'G_B')):  # trained BtoA: G_A maps B to A
        G = generators.load_generator(str(tmp_path / 'ckpt.pt'), direction)[0]
        assert all(torch.equal(v, ckpt[key][k]) for k, v in G.state_dict().items())

def test_official_generator_files_load_with_module_prefix_and_legacy_instance_norm_keys(tmp_path):
    torch.manual_seed(0)
    G = cyclegan.ResnetGenerator(ngf=8, n_blocks=9)
    sd = {'module.' + k: v for k, v in G.state_dict().items()}
    sd['module.model.2.running_mean'] = torch.zeros(8)  # what old official files carry
    sd['module.model.10.conv_block.2.num_batches_tracked'] = torch.tensor(0)
    torch.save(sd, tmp_path / 'official.pth')
    loaded = generators.load_generator(str(tmp_path / 'official.pth'))[0]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), G(x))
    U = pixelgan.UnetGenerator(num_downs=7, ngf=4, norm='batch').eval()
    torch.save({'module.' + k: v for k, v in U.state_dict().items()}, tmp_path / 'unet.pth')
    loaded, multiple = generators.load_generator(str(tmp_path / 'unet.pth'))
    assert multiple == 128
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(loaded.eval()(x), U(x))

def test_resnet_generator_files_load_with_any_norm_and_dropout(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    # with dropout (pix2pix's option) the second conv of each block moves to index 6
    for norm in ('instance', 'batch'):
        for dropout in (False, True):
            G = cyclegan.ResnetGenerator(ngf=4, n_blocks=6, norm=norm, dropout=dropout).eval()
            torch.save(G.state_dict(), tmp_path / 'g.pth')
            loaded, multiple = generators.load_generator(str(tmp_path / 'g.pth'))
            assert multiple == 4 and torch.equal(loaded.eval()(x), G(x)), (norm, dropout)

OFFICIAL_VARIANTS = [  # (the network as the official code builds it, a side)
    *[(functools.partial(cyclegan.ResnetGenerator, *nc, ngf=4, norm=norm, n_blocks=6,
                         dropout=dropout), 32)
      for norm in ('instance', 'batch', 'none') for dropout in (False, True)
      for nc in ((3, 3), (1, 1), (1, 3))],
    (functools.partial(cyclegan.ResnetGenerator, 3, 3, ngf=4, n_blocks=9), 32),
    *[(functools.partial(pixelgan.UnetGenerator, *nc, num_downs=downs, ngf=4, norm=norm),
       2 ** downs)
      for norm in ('batch', 'instance', 'none') for nc in ((3, 3), (1, 1), (3, 1))
      for downs in (7, 8)],
]

@pytest.mark.parametrize('make, side', OFFICIAL_VARIANTS)
def test_every_official_generator_variant_loads_and_computes_the_same(tmp_path, make, side):
    torch.manual_seed(0)
    G = make()
    for m in G.modules():  # running statistics as a trained file has them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    G.eval()
    torch.save({'module.' + k: v for k, v in G.state_dict().items()}, tmp_path / 'official.pth')
    loaded, _ = generators.load_generator(str(tmp_path / 'official.pth'))
    in_channels = make.args[0] if make.args else 3
    x = torch.randn(1, in_channels, side, side)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), G(x))

def test_translate_explains_files_it_cannot_use(tmp_path):
    torch.save(cyclegan.NLayerDiscriminator(ndf=4).state_dict(), tmp_path / 'd.pth')
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'random.pth')
    for f, says in (('d.pth', 'a discriminator'), ('random.pth', 'not a generator state_dict')):
        with pytest.raises(SystemExit, match=says):
            generators.load_generator(str(tmp_path / f))
    save_image(str(tmp_path / 'img' / 'a.png'))
    p = run('tools/translate.py', tmp_path / 'img', '--ckpt', tmp_path / 'd.pth', check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == (f"error: {tmp_path / 'd.pth'}: a discriminator; give a generator "
                                f"(ResNet or U-Net)")

def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / 'evil.pt', 'wb') as f:
        pickle.dump({'G_A': Evil()}, f, protocol=2)
    with pytest.raises(SystemExit, match='would run code'):
        generators.load_generator(str(tmp_path / 'evil.pt'))
    p = run('cyclegan.py', '--resume', '--ckpt', tmp_path / 'evil.pt', check=False)
    assert p.returncode == 1 and 'would run code' in p.out and 'Traceback' not in p.out
    assert not marker.exists()

def test_translate_takes_images_of_any_size_even_tiny_ones(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    for size in ((1, 1), (5, 3), (37, 23)):
        save_image(str(tmp_path / 'in' / f'{size[0]}x{size[1]}.png'), size=size)
    run('tools/translate.py', tmp_path / 'in', '--ckpt', tmp_path / 'g.pth',
        '--results_dir', tmp_path / 'out')
    for size in ((1, 1), (5, 3), (37, 23)):
        assert Image.open(tmp_path / 'out' / f'{size[0]}x{size[1]}.png').size == size

def test_translate_never_writes_over_its_inputs_or_earlier_results(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    save_image(str(tmp_path / 'photos' / 'a.png'))
    before = (tmp_path / 'photos' / 'a.png').read_bytes()
    os.symlink(tmp_path / 'photos', tmp_path / 'alias')  # the input folder under another name
    for results in (tmp_path / 'photos', tmp_path / 'alias', tmp_path / 'photos' / '..' / 'photos'):
        p = run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth',
                '--results_dir', results, check=False)
        assert p.returncode == 1 and 'a.png would be replaced' in p.out and 'Traceback' not in p.out
    assert (tmp_path / 'photos' / 'a.png').read_bytes() == before
    run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth',
        '--results_dir', tmp_path / 'r')
    result = (tmp_path / 'r' / 'a.png').read_bytes()
    p = run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth',
            '--results_dir', tmp_path / 'r')  # a rerun keeps what is newer than its input
    assert 'kept 1 image(s) translated before; translating 0' in p.out
    assert (tmp_path / 'r' / 'a.png').read_bytes() == result  # an earlier result stays
    os.utime(tmp_path / 'r' / 'a.png', (0, 0))  # older than its input: not the input's result
    line = one_line(run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth',
                        '--results_dir', tmp_path / 'r', check=False))
    assert line.endswith('a.png is older than its input; remove it or give another --results_dir')
    assert (tmp_path / 'r' / 'a.png').read_bytes() == result
    (tmp_path / 'links').mkdir()
    os.symlink(tmp_path / 'nowhere.png', tmp_path / 'links' / 'a.png')  # a dangling link
    line = one_line(run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth',
                        '--results_dir', tmp_path / 'links', check=False))
    assert 'a.png would be replaced' in line and not (tmp_path / 'nowhere.png').exists()


def test_translate_after_a_broken_image_is_removed_keeps_the_earlier_outputs(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    for name in 'abcd':
        save_image(str(tmp_path / 'in' / f'{name}.png'), size=(20, 20))
    broken = tmp_path / 'in' / 'c.png'
    broken.write_bytes(b'\x89PNG garbage, not an image')
    p = run('tools/translate.py', tmp_path / 'in', '--ckpt', tmp_path / 'g.pth', '--results_dir',
            tmp_path / 'r', '--batch_size', 1, check=False)
    assert str(broken) in one_line(p)
    earlier = {f: os.stat(tmp_path / 'r' / f).st_mtime_ns for f in os.listdir(tmp_path / 'r')}
    assert 'a.png' in earlier and 'c.png' not in earlier
    broken.unlink()
    p = run('tools/translate.py', tmp_path / 'in', '--ckpt', tmp_path / 'g.pth', '--results_dir',
            tmp_path / 'r', '--batch_size', 1)
    assert f'kept {len(earlier)}' in p.stdout
    assert sorted(os.listdir(tmp_path / 'r')) == ['a.png', 'b.png', 'd.png']
    assert {f: os.stat(tmp_path / 'r' / f).st_mtime_ns for f in earlier} == earlier

def test_translate_load_size_resizes_the_shorter_side_and_writes_the_input_size(
        tmp_path, monkeypatch, tiny_runs):
    save_image(str(tmp_path / 'in' / 'wide.png'), size=(640, 480))
    seen = []
    original = translate_tool.run_generator

    def recording(G, x, multiple):
        seen.append(tuple(x.shape[-2:]))
        return original(G, x, multiple)

    monkeypatch.setattr(translate_tool, 'run_generator', recording)
    run('tools/translate.py', tmp_path / 'in', '--ckpt', tiny_runs[0], '--load_size', 64,
        '--results_dir', tmp_path / 'out', '--device', 'cpu')
    assert seen == [(64, 85)]  # 85 x 64: 640 x 480 with its shorter side at 64
    assert Image.open(tmp_path / 'out' / 'wide.png').size == (640, 480)

def test_translate_in_batches_of_8_writes_the_same_bytes_as_one_by_one(tmp_path, tiny_runs):
    for i in range(16):
        save_image(str(tmp_path / 'in' / f'{i:02d}.png'), size=(40, 32), seed=i)
    for batch in (1, 8):
        run('tools/translate.py', tmp_path / 'in', '--ckpt', tiny_runs[0], '--batch_size', batch,
            '--dtype', 'float32', '--device', 'cpu', '--results_dir', tmp_path / f'out{batch}')
    names = sorted(os.listdir(tmp_path / 'out1'))
    assert len(names) == 16
    assert sorted(os.listdir(tmp_path / 'out8')) == names
    for name in names:
        one = (tmp_path / 'out1' / name).read_bytes()
        assert (tmp_path / 'out8' / name).read_bytes() == one, name

def translated(tmp_path, images, ckpt, name):
    """The bytes of each PNG that tools/translate.py writes from ckpt, by file name."""
    out = tmp_path / name
    run('tools/translate.py', images, '--ckpt', ckpt, '--results_dir', out, '--device', 'cpu',
        '--dtype', 'float32')
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out))}

@needs_safetensors
@pytest.mark.parametrize('kind', ['cyclegan', 'pixelgan', 'official_resnet', 'official_unet'])
def test_a_safetensors_export_translates_to_the_same_bytes_as_its_source(tmp_path, tiny_runs,
                                                                         kind):
    sources = {'cyclegan': tiny_runs[0], 'pixelgan': tiny_runs[1]}
    gen = torch.Generator().manual_seed(0)
    if kind == 'official_resnet':
        sources[kind] = tmp_path / 'latest_net_G.pth'
        torch.save(official_resnet_state_dict(gen=gen), sources[kind])
    if kind == 'official_unet':
        sources[kind] = tmp_path / 'latest_net_G.pth'
        torch.save(official_unet_state_dict(gen=gen), sources[kind])
    for i, size in enumerate([(40, 32), (37, 29)]):
        save_image(str(tmp_path / 'in' / f'{i}.png'), size=size, seed=i)
    run('tools/export.py', '--ckpt', sources[kind], '--out', tmp_path / 'G.safetensors')
    expected = translated(tmp_path, tmp_path / 'in', sources[kind], 'from_source')
    assert len(expected) == 2
    got = translated(tmp_path, tmp_path / 'in', tmp_path / 'G.safetensors', 'from_safetensors')
    assert got == expected

@needs_safetensors
def test_a_safetensors_file_of_wrong_metadata_or_tensors_is_one_line(tmp_path, tiny_runs):
    from safetensors import safe_open
    from safetensors.torch import save_file
    run('tools/export.py', '--ckpt', tiny_runs[0], '--out', tmp_path / 'G.safetensors')
    with safe_open(str(tmp_path / 'G.safetensors'), 'pt') as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    assert metadata['ngf'] == '4'
    renamed = dict(tensors)
    renamed['model.4.weight_old'] = renamed.pop('model.4.weight')
    reshaped = {**tensors, 'model.4.bias': tensors['model.4.bias'].reshape(2, -1)}
    cases = [
        ('metadata.safetensors', tensors, {**metadata, 'ngf': '8'},
         'its metadata', 'does not match its weights'),
        ('renamed.safetensors', renamed, metadata,
         'not the weights of this ResnetGenerator', 'missing: model.4.weight'),
        ('reshaped.safetensors', reshaped, metadata,
         'not the weights of this ResnetGenerator', 'of other shapes: model.4.bias'),
    ]
    save_image(str(tmp_path / 'in' / 'a.png'))
    for name, weights, meta, says, detail in cases:
        save_file(weights, str(tmp_path / name), metadata=meta)
        p = run('tools/translate.py', tmp_path / 'in', '--ckpt', tmp_path / name,
                '--results_dir', tmp_path / 'out', '--device', 'cpu', check=False)
        line = one_line(p)
        assert line.startswith(f"error: {tmp_path / name}: {says}"), line
        assert detail in line, line
        assert not (tmp_path / 'out' / 'a.png').exists()


# -----------------------------------------------------------------------------
# tools/export.py: the generator for use without this code (.pt2, .onnx, official .pth files)

def exported_generators(tiny_runs):
    """The tiny runs' checkpoints with their generators as translate runs them, and two sizes
    each (the second not square)."""
    G_c = generators.load_generator(str(tiny_runs[0]))[0].eval()
    G_p = generators.load_generator(str(tiny_runs[1]))[0].eval()
    return [(cyclegan, tiny_runs[0], G_c, [(8, 8), (36, 52)]),
            (pixelgan, tiny_runs[1], G_p, [(128, 128), (256, 384)])]

def test_export_pt2_runs_at_any_size_like_the_generator(tmp_path, tiny_runs):
    for module, ckpt, G, sizes in exported_generators(tiny_runs):
        path = tmp_path / f'{module.SCRIPT}.pt2'
        run('tools/export.py', '--out', path, '--ckpt', ckpt)
        exported = torch.export.load(str(path)).module()  # as a deployment, without this code
        for batch, size in zip((1, 3), sizes):  # batch, height and width free
            x = torch.rand(batch, 3, *size) * 2 - 1
            with torch.no_grad():
                torch.testing.assert_close(exported(x), G(x), rtol=1e-4, atol=1e-4)

@needs_onnx
def test_export_onnx_runs_at_any_size_like_the_generator(tmp_path, tiny_runs):
    import onnxruntime
    for module, ckpt, G, sizes in exported_generators(tiny_runs):
        path = tmp_path / f'{module.SCRIPT}.onnx'
        run('tools/export.py', '--out', path, '--ckpt', ckpt)
        session = onnxruntime.InferenceSession(str(path))
        assert os.listdir(tmp_path).count(path.name) == 1  # one file: no external weights
        assert not (tmp_path / (path.name + '.data')).exists()
        for batch, size in zip((1, 3), sizes):
            x = torch.rand(batch, 3, *size) * 2 - 1
            y = session.run(None, {'x': x.numpy()})[0]
            with torch.no_grad():
                torch.testing.assert_close(torch.from_numpy(y), G(x), rtol=1e-4, atol=1e-4)

def test_a_pt2_export_refuses_sizes_the_generator_would_not_keep(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    run('tools/export.py', '--ckpt', tmp_path / 'g.pth', '--out', tmp_path / 'g.pt2')
    G = generators.load_generator(str(tmp_path / 'g.pth'))[0].eval()
    exported = torch.export.load(str(tmp_path / 'g.pt2')).module()
    x = torch.rand(2, 3, 12, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(exported(x), G(x), rtol=1e-4, atol=1e-4)
        for size in ((10, 12), (12, 10)):  # G itself would return 12 x 12
            with pytest.raises(AssertionError, match=r'% 4 == 0'):
                exported(torch.zeros(1, 3, *size))

@needs_onnx
def test_an_onnx_export_fails_on_such_sizes_as_its_docstring_says(tmp_path):
    import onnxruntime
    assert 'onnxruntime fails inside it with a shape error' in ' '.join(export_tool.__doc__.split())
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    run('tools/export.py', '--ckpt', tmp_path / 'g.pth', '--out', tmp_path / 'g.onnx')
    session = onnxruntime.InferenceSession(str(tmp_path / 'g.onnx'))
    assert session.run(None, {'x': np.zeros((1, 3, 12, 8), np.float32)})[0].shape == (1, 3, 12, 8)
    with pytest.raises(Exception, match='ONNXRuntimeError'):
        session.run(None, {'x': np.zeros((1, 3, 10, 12), np.float32)})

def test_export_official_round_trip(tmp_path, tiny_runs):
    official = tmp_path / 'official'
    run('tools/export.py', '--out', official, '--ckpt', tiny_runs[0])
    p = run('tools/export.py', '--out', official, '--ckpt', tiny_runs[0], check=False)
    assert p.returncode == 1 and 'latest_net_G_A.pth exists' in p.out  # a model is never replaced
    files = [f'latest_net_{k}.pth' for k in ('D_A', 'D_B', 'G_A', 'G_B')]
    assert sorted(os.listdir(official)) == files
    sd = torch.load(official / 'latest_net_G_A.pth', weights_only=True)
    assert 'model.1.weight' in sd  # a bare state_dict with the official keys
    G_official = generators.load_generator(str(official / 'latest_net_G_A.pth'))[0]
    G_ours = generators.load_generator(str(tiny_runs[0]))[0]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(G_official(x), G_ours(x))

def test_export_never_replaces_a_file(tmp_path, tiny_runs):
    (tmp_path / 'g.pt2').write_bytes(b'mine')
    p = run('tools/export.py', '--ckpt', tiny_runs[0], '--out', tmp_path / 'g.pt2', check=False)
    assert p.returncode == 1 and 'g.pt2 exists' in p.out
    assert (tmp_path / 'g.pt2').read_bytes() == b'mine'

def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    (tmp_path / 'folder.pt2').mkdir()
    (tmp_path / 'file').write_text('')
    cases = [(tmp_path / 'folder.pt2', f"error: --out {tmp_path / 'folder.pt2'} is a folder"),
             (tmp_path / 'file' / 'g.pt2',
              f"error: --out {tmp_path / 'file' / 'g.pt2'}: {tmp_path / 'file'} is a file"),
             (tmp_path / 'file' / 'sub' / 'g.onnx', 'cannot write it (Not a directory)')]
    if os.geteuid() != 0:  # (root writes anyway)
        (tmp_path / 'read_only').mkdir(mode=0o555)
        cases.append((tmp_path / 'read_only' / 'g.pt2', 'cannot write it (Permission denied)'))
    for out, says in cases:
        line = one_line(run('tools/export.py', '--ckpt', tmp_path / 'g.pth', '--out', out,
                            check=False))
        assert line.startswith('error: --out') and says in line
    def disk_full(fd):  # a full disk, met when the exported program is written
        if os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    out = tmp_path / 'new' / 'g.pt2'
    line = one_line(run('tools/export.py', '--ckpt', tmp_path / 'g.pth', '--out', out, check=False))
    assert line.startswith(f"error: could not write {out} ([Errno 28] No space left on device)")
    assert os.listdir(tmp_path / 'new') == []  # neither the file nor a temporary one

def test_export_official_checks_every_weight_loads_before_writing(tmp_path, tiny_runs):
    ckpt = torch.load(tiny_runs[0], weights_only=True)
    renamed = dict(ckpt['G_B'])
    renamed['model.1.weight_old'] = renamed.pop('model.1.weight')
    misshaped = {**ckpt['D_A'], 'model.0.weight': torch.zeros(1, 2, 3)}
    cases = {
        'renamed.pt': ({**ckpt, 'G_B': renamed},
                       'G_B does not load (Error(s) in loading state_dict for ResnetGenerator: '
                       'Missing key(s) in state_dict: "model.1.weight"'),
        'misshaped.pt': ({**ckpt, 'D_A': misshaped},
                         'D_A does not load (Error(s) in loading state_dict for '
                         'NLayerDiscriminator: size mismatch for model.0.weight'),
        'no_weights.pt': ({**ckpt, 'G_A': 'nothing'},
                          'G_A does not load (Expected state_dict to be dict-like'),
    }
    for name, (damaged, says) in cases.items():
        torch.save(damaged, tmp_path / name)
        line = one_line(run('tools/export.py', '--ckpt', tmp_path / name,
                            '--out', tmp_path / 'official', check=False))
        assert line.startswith(f"error: {tmp_path / name}: ") and says in line
        assert line.endswith('; the checkpoint is damaged')
        assert not (tmp_path / 'official').exists()
    (tmp_path / 'file').write_text('')
    line = one_line(run('tools/export.py', '--ckpt', tiny_runs[0], '--out', tmp_path / 'file',
                        check=False))
    assert f"{tmp_path / 'file'} is a file, not a folder" in line
    assert (tmp_path / 'file').read_text() == ''

def test_export_official_writes_all_files_or_none(tmp_path, tiny_runs, monkeypatch):
    sizes = []
    def disk_full_at_the_third(fd):
        if os.fstat(fd).st_size > 0:
            sizes.append(os.fstat(fd).st_size)
        if len(sizes) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full_at_the_third)
    p = run('tools/export.py', '--ckpt', tiny_runs[0], '--out', tmp_path / 'official', check=False)
    assert 'could not write' in one_line(p) and 'No space left on device' in one_line(p)
    assert os.listdir(tmp_path / 'official') == []  # the two written before are gone too

# -----------------------------------------------------------------------------
# tools/evaluate.py and tools/fid.py: scores of a checkpoint, FID and KID; the FID Inception
# network in code, its weights as data (made here at random: nothing is downloaded)

def inception_weights(path, seed=0):
    """A file of the FID Inception's layout with random weights (He init, identity batch norm),
    so that the features depend on the images; 95 MB, as the real one."""
    gen = torch.Generator().manual_seed(seed)
    weights = fid.fid_inception().state_dict()
    for k, v in weights.items():
        if k.endswith('conv.weight'):
            v.copy_(torch.randn(v.shape, generator=gen) * (2 / v[0].numel()) ** 0.5)
        elif k.endswith('running_var') or k.endswith('bn.weight'):
            v.fill_(1)
        elif v.is_floating_point():
            v.zero_()
    torch.save(weights, path)
    return path

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """The random FID Inception weights file, made once for the tests that read it."""
    return inception_weights(tmp_path_factory.mktemp('fid') / 'inception.pth')

def reference_fid_kid(real, fake):
    """FID and KID written out in numpy (float64): FID = |mu1 - mu2|^2 + tr(S1 + S2 -
    2 (S1^1/2 S2 S1^1/2)^1/2); KID = the unbiased MMD^2 of the kernel (x.y / d + 1)^3 over all
    samples (equal counts)."""
    real, fake = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    fid = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    m, d = len(real), real.shape[1]
    def k(a, b):
        return (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(real, real), k(fake, fake), k(real, fake)
    within = (kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))
    kid = within / (m * (m - 1)) - 2 * kxy.sum() / m ** 2
    return fid, kid

def test_fid_of_two_gaussians_is_the_closed_form():
    """Features with exact sample moments: N(0, 1 I) against N(mu, 4 I) in 3 dimensions,
    |mu|^2 = 9: FID = |mu|^2 + d (sigma1 - sigma2)^2 = 9 + 3 = 12; a set against itself: 0. (KID,
    an unbiased estimate, can go below 0: its reference check is the next test.)"""
    signs = torch.cat([torch.eye(3), -torch.eye(3)])  # 6 points: mean 0, covariance 2/5 I
    real = signs * (5 / 2) ** 0.5  # covariance I
    fake = torch.tensor([1.0, 2.0, 2.0]) + signs * 10 ** 0.5  # covariance 4 I
    assert fid.FeatureNetwork.distances(real, fake)['fid'] == pytest.approx(12, rel=1e-6)
    assert fid.FeatureNetwork.distances(real, real)['fid'] == pytest.approx(0, abs=1e-6)

def test_fid_and_kid_agree_with_a_reference_on_the_same_features():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=gen)
    fake = 0.5 + 1.5 * torch.randn(40, 8, generator=gen) @ torch.randn(8, 8, generator=gen) / 3
    reference_fid, reference_kid = reference_fid_kid(real, fake)
    ours = fid.FeatureNetwork.distances(real, fake)
    assert ours['fid'] == pytest.approx(reference_fid, rel=1e-6)
    assert ours['kid'] == pytest.approx(reference_kid, rel=1e-6)
    assert ours['kid_std'] < 1e-12  # every subset of 40 out of 40 is all of them
    assert fid.FeatureNetwork.distances(real, fake) == ours  # KID's subsets come from a fixed seed
    state = torch.get_rng_state()
    fid.FeatureNetwork.distances(real, fake)
    assert torch.equal(torch.get_rng_state(), state)  # the training's random stream: untouched

@needs_torchmetrics
def test_fid_and_kid_agree_with_torchmetrics_subsets_and_all():
    """The same numbers as torchmetrics on the same features, KID's 100 subsets drawn alike."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    class Features(torch.nn.Module):  # torchmetrics runs this on what update() gets
        num_features = 16
        def forward(self, x):
            return x
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 16, generator=gen), 0.3 + torch.randn(300, 16, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # (KID warns that it keeps every feature)
        theirs = [FrechetInceptionDistance(Features()),
                  KernelInceptionDistance(Features(), subset_size=200)]
    torch.manual_seed(0)  # (torchmetrics draws its subsets from the global generator)
    for metric in theirs:
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid, kid_std = theirs[1].compute()
    ours = fid.FeatureNetwork.distances(real, fake)
    assert ours['fid'] == pytest.approx(theirs[0].compute().item(), rel=1e-5)
    subsets = fid.kernel_distance(real.double(), fake.double(), size=200)
    assert subsets['kid'].item() == pytest.approx(kid.item(), rel=1e-5)
    assert subsets['kid_std'].item() == pytest.approx(kid_std.item(), rel=1e-4)

@needs_fidelity
def test_the_fid_network_computes_what_torch_fidelitys_does(weights, monkeypatch):
    """The architecture in code, on the same weights, gives torch-fidelity's features of 8-bit
    images, resizing to 299x299 as TensorFlow did included."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    with monkeypatch.context() as m:  # built without its weights (it would download them)
        m.setattr(fidelity, 'load_state_dict_from_url', lambda *a, **k: None)
        m.setattr(fidelity.FeatureExtractorInceptionV3, 'load_state_dict', lambda self, sd: None)
        theirs = fidelity.FeatureExtractorInceptionV3('inception-v3-compat', ['2048'])
    theirs.load_state_dict(torch.load(weights, weights_only=True))
    ours = fid.FeatureNetwork(str(weights), torch.device('cpu'))
    x = torch.rand(3, 3, 64, 80) * 2 - 1
    levels = ((x + 1) * 127.5).round().to(torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(levels)[0], rtol=1e-5, atol=1e-6)

def test_feature_network_rounds_to_8_bits_and_works_in_bounded_chunks(weights):
    features = fid.FeatureNetwork(str(weights), torch.device('cpu'))
    x = torch.rand(20, 3, 20, 24) * 2 - 1
    seen = []  # the batch sizes the network gets
    forward = features.net.forward
    features.net.forward = lambda batch: seen.append(len(batch)) or forward(batch)
    out = features(x)
    assert out.shape == (20, 2048) and seen == [16, 4]  # at most 16 images at a time
    levels = ((x + 1) * 127.5).round() / 127.5 - 1  # as an 8-bit PNG holds them
    torch.testing.assert_close(features(levels), out)
    gray = x[:2, :1]
    torch.testing.assert_close(features(gray), features(gray.expand(-1, 3, -1, -1)))

def test_fid_and_kid_are_logged_and_keep_the_best_checkpoint(tmp_path, weights, monkeypatch):
    make_unpaired(tmp_path / 'data')
    out = tmp_path / 'out'
    calls = []  # the real images' features: once per domain and run, not at every evaluation
    of_dataset = fid.FeatureNetwork.of_dataset
    monkeypatch.setattr(fid.FeatureNetwork, 'of_dataset',
                        lambda self, *a: calls.append(a[1]) or of_dataset(self, *a))
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--max_iters', 4,
        '--eval_freq', 2, '--fid_weights', weights, '--out_dir', out)
    assert calls == ['A', 'B']
    evals = [r for r in read_log(out) if 'fid_AtoB' in r]
    assert [r['step'] for r in evals] == [2, 4]
    assert all({'kid_AtoB', 'fid_BtoA', 'kid_BtoA'} <= set(r) for r in evals)
    sums = [r['fid_AtoB'] + r['fid_BtoA'] for r in evals]
    best = torch.load(out / 'best.pt', weights_only=True)
    assert best['best_fid'] == pytest.approx(min(sums))
    assert best['step'] == evals[sums.index(min(sums))]['step']
    assert torch.load(out / 'ckpt.pt', weights_only=True)['best_fid'] == pytest.approx(min(sums))
    # the same numbers from the checkpoint alone, standalone; the environment names the file
    env = {**os.environ, 'FID_WEIGHTS': str(weights)}
    p = run('tools/evaluate.py', '--ckpt', out / 'ckpt.pt', env=env)
    alone = json.loads(p.stdout.splitlines()[-1])
    for k in ('fid_AtoB', 'kid_AtoB', 'fid_BtoA', 'kid_BtoA'):
        assert alone[k] == pytest.approx(evals[-1][k], rel=1e-5), k
    assert 'not the published FID Inception file' in p.stderr  # (random weights)
    # a new run does not replace the earlier run's best.pt
    (out / 'ckpt.pt').unlink()
    (out / 'log.jsonl').unlink()
    before = (out / 'best.pt').read_bytes()
    p = run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--max_iters', 2,
            '--fid_weights', weights, '--out_dir', out, check=False)
    assert p.returncode != 0 and "best.pt exists: --resume its run" in p.out
    assert (out / 'best.pt').read_bytes() == before

def make_paired(root, phases=('train', 'val'), n=3, size=128):
    """Side-by-side pairs (A left, B right) in root/<phase>/."""
    for phase in phases:
        for i in range(n):
            save_image(str(root / phase / f'{i}.png'), size=(2 * size, size), seed=i)

def test_pixelgan_fid_at_evaluation_and_standalone(tmp_path, weights):
    make_paired(tmp_path / 'data')
    out = tmp_path / 'out'
    run('pixelgan.py', '--dataroot', tmp_path / 'data', *TINY_PIXELGAN, '--max_iters', 2,
        '--eval_freq', 2, '--fid_weights', weights, '--out_dir', out)
    last = [r for r in read_log(out) if 'fid' in r][-1]
    assert last['fid'] > 0 and 'kid' in last and (out / 'best.pt').exists()
    p = run('tools/evaluate.py', '--ckpt', out / 'ckpt.pt', '--fid_weights', weights)
    alone = json.loads(p.stdout.splitlines()[-1])
    assert alone['fid'] == pytest.approx(last['fid'], rel=1e-5)
    assert alone['kid'] == pytest.approx(last['kid'], rel=1e-5)

def test_fid_weights_default_to_where_the_download_puts_them(tmp_path, weights, monkeypatch):
    """--fid without --fid_weights: the torch hub folder (under $TORCH_HOME), where
    `tools/download.py model fid_inception` writes the file and pytest-fid keeps it too."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    make_unpaired(tmp_path / 'data')
    flags = ['--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--max_iters', 2, '--eval_freq', 2]
    line = one_line(run('cyclegan.py', *flags, '--fid', '--out_dir', tmp_path / 'o1',
                        check=False))
    assert line == (f"error: --fid_weights {fid.default_weights()}: no such file; python "
                    f"tools/download.py model fid_inception fetches it")
    os.makedirs(os.path.dirname(fid.default_weights()))
    shutil.copy(weights, fid.default_weights())
    run('cyclegan.py', *flags, '--fid', '--out_dir', tmp_path / 'o2')
    assert any('fid_AtoB' in r for r in read_log(tmp_path / 'o2'))

def broken_inception(tmp_path, name, change):
    """The random weights with one change: a file that loads but cannot give features."""
    weights = torch.load(inception_weights(tmp_path / name), weights_only=True)
    change(weights)
    torch.save(weights, tmp_path / name)
    return tmp_path / name

def negative_variance(weights):  # an Inception whose features are NaN
    weights['Mixed_7c.branch_pool.bn.running_var'].fill_(-1)

def no_convolutions(weights):  # an Inception whose features do not depend on the image
    for k in weights:
        if k.endswith('conv.weight'):
            weights[k].zero_()

def test_a_feature_network_that_gives_no_features_fails_at_start(tmp_path):
    """Tried on two different images as it loads: NaN features (a negative variance makes them)
    and features that do not depend on the image are each one line, before any training."""
    nan = broken_inception(tmp_path, 'nan.pth', negative_variance)
    constant = broken_inception(tmp_path, 'constant.pth', no_convolutions)
    save_image(str(tmp_path / 'images' / 'a.png'))
    save_image(str(tmp_path / 'images' / 'b.png'), seed=1)
    for path, says in [(nan, 'its features are not finite'),
                       (constant, 'gives the same features for different images')]:
        p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 2, '--fid_weights', path,
                '--out_dir', tmp_path / f'run_{path.stem}', check=False)
        assert one_line(p) == f'error: --fid_weights {path}: {says}; the file is damaged'
        assert not (tmp_path / f'run_{path.stem}' / 'ckpt.pt').exists()
        p = run('tools/evaluate.py', '--real', tmp_path / 'images', '--fake', tmp_path / 'images',
                '--fid_weights', path, check=False)
        assert one_line(p) == f'error: --fid_weights {path}: {says}; the file is damaged'
    weights = torch.load(inception_weights(tmp_path / 'w.pth'), weights_only=True)
    weights['fc.weight'][0, 0] = float('inf')
    torch.save(weights, tmp_path / 'inf.pth')
    line = one_line(run('tools/evaluate.py', '--real', tmp_path / 'images', '--fake',
                        tmp_path / 'images', '--fid_weights', tmp_path / 'inf.pth', check=False))
    assert line == f"error: --fid_weights {tmp_path / 'inf.pth'}: its weights are not all finite"

class RunsCode:
    """Unpickled, this runs a shell command: what a hostile file would hold."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def hostile_programs(tmp, marker):
    """Feature 'networks' that are programs: a .pt2 whose symbolic size sympy evaluates in
    torch.export.load, one whose guard .module() would exec, one holding a pickle, and
    TorchScript."""
    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))
    batch = torch.export.Dim('batch', min=2)
    good = tmp / 'good.pt2'
    torch.export.save(torch.export.export(Mean(), (torch.zeros(4, 3, 8, 8),),
                                          dynamic_shapes=({0: batch},)), str(good))
    evil = f"__import__('os').system('touch {marker}')"
    def rewritten(path, change):
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, 'w') as zout:
            for info in zin.infolist():
                content = zin.read(info.filename)
                if info.filename.endswith('models/model.json'):
                    content = change(content.decode()).encode()
                zout.writestr(info.filename, content)
        return path
    symbol = "Symbol('s77', positive=True, integer=True)"
    expr = rewritten(tmp / 'expr.pt2', lambda s: s.replace(symbol, f'{evil}*0 + {symbol}', 1))
    guard = rewritten(tmp / 'guard.pt2', lambda s: json.dumps(
        {**json.loads(s), 'guards_code': [f'{evil} == 0']}))
    pickled = tmp / 'pickled.pt2'
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(pickled, 'w') as zout:
        for info in zin.infolist():
            content = zin.read(info.filename)
            if info.filename.endswith('sample_inputs/model.pt'):
                content = pickle.dumps(RunsCode(marker), protocol=2)
            zout.writestr(info.filename, content)
    script = tmp / 'script.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(Mean()), str(script))
    return [expr, guard, pickled, script]

def test_a_feature_file_that_is_a_program_is_refused_and_runs_nothing(tmp_path, tiny_runs):
    """--fid_weights takes the FID Inception's weights only: a .pt2 or TorchScript file is code
    (torch.export.load and .module() run text stored in it), refused before it is read, through
    every entry point: the tools' flag, $FID_WEIGHTS, training, a checkpoint's own args."""
    marker = tmp_path / 'code_ran'
    programs = hostile_programs(tmp_path, marker)
    load = 'import sys, torch; torch.export.load(sys.argv[1])'
    loaded = subprocess.run([sys.executable, '-c', load, str(programs[0])], capture_output=True,
                            timeout=120)
    assert marker.exists(), loaded.stderr  # the file is hostile: torch's own load runs it
    marker.unlink()
    save_image(str(tmp_path / 'images' / 'a.png'))
    save_image(str(tmp_path / 'images' / 'b.png'), seed=1)
    ckpt = torch.load(tiny_runs[0], weights_only=True)
    for path in programs:
        refused = f'error: --fid_weights {path}: refused: a program (TorchScript or torch.export)'
        p = run('tools/evaluate.py', '--real', tmp_path / 'images', '--fake', tmp_path / 'images',
                '--fid_weights', path, check=False)
        assert one_line(p).startswith(refused)
        p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--fid_weights', path,
                '--out_dir', tmp_path / f'o_{path.stem}', check=False)
        assert one_line(p).startswith(refused)
    names_it = {**ckpt, 'args': {**ckpt['args'], 'fid_weights': str(programs[0])}}
    torch.save(names_it, tmp_path / 'names_it.pt')  # a checkpoint whose run's flags name one
    p = run('tools/evaluate.py', '--ckpt', tmp_path / 'names_it.pt')
    assert p.stderr.startswith(f'note: no FID or KID: --fid_weights {programs[0]}: refused')
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[0],
            env={**os.environ, 'FID_WEIGHTS': str(programs[1])})
    assert p.stderr.startswith(f'note: no FID or KID: --fid_weights {programs[1]}: refused')
    assert not marker.exists()

def test_fid_weights_naming_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(SystemExit) as e:
        fid.FeatureNetwork(str(tmp_path), torch.device('cpu'))
    assert e.value.code == (f"error: --fid_weights {tmp_path}: a folder, not a file; give the "
                            f"weights file")

def test_fid_weights_from_the_environment_is_a_note_where_it_cannot_be_used(tmp_path, tiny_runs):
    """$FID_WEIGHTS adds FID where it can and says in one line where it cannot; --fid_weights,
    asked for on the command line, stays an error."""
    missing = tmp_path / 'nothing.pt'
    env = {**os.environ, 'FID_WEIGHTS': str(missing)}
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[0], env=env)
    note = (f'note: no FID or KID: --fid_weights {missing}: no such file; python '
            f'tools/download.py model fid_inception fetches it')
    assert p.stderr.strip().splitlines() == [note]
    scores = json.loads(p.stdout.splitlines()[-1])
    assert 'psnr_AtoB' in scores and 'fid_AtoB' not in scores
    line = one_line(run('tools/evaluate.py', '--ckpt', tiny_runs[0], '--fid_weights', missing,
                        check=False))
    assert line == note.replace('note: no FID or KID:', 'error:')  # asked for here: an error

def test_fid_weights_from_the_environment_adds_fid_where_it_can(tmp_path, tiny_runs, weights):
    make_paired(tmp_path / 'data', phases=('val',))
    env = {**os.environ, 'FID_WEIGHTS': str(weights)}
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[1], '--dataroot', tmp_path / 'data', env=env)
    assert 'fid' in json.loads(p.stdout.splitlines()[-1])
    one_pair = tmp_path / 'one_pair'
    save_image(str(one_pair / 'test' / '1.png'), size=(256, 128))  # too few held-out pairs for FID
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[1], '--dataroot', one_pair, env=env)
    note = p.stderr.strip().splitlines()[-1]
    assert note == 'note: no FID or KID: --fid: FID needs at least 2 held-out images; B has 1'
    scores = json.loads(p.stdout.splitlines()[-1])
    assert 'psnr' in scores and 'fid' not in scores

def test_fid_weights_from_the_environment_does_not_change_a_training_run(tmp_path):
    env = {**os.environ, 'FID_WEIGHTS': str(tmp_path / 'nothing.pt')}
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 2, '--eval_freq', 2,
            '--out_dir', tmp_path, env=env)
    assert 'eval at iter 2' in p.out  # FID only with --fid or --fid_weights:
    assert not any(k.startswith(('fid', 'kid')) for r in read_log(tmp_path) for k in r)


@pytest.mark.parametrize('which, flags, says', [
    (0, ['--crop_size', 30], '--crop_size 30'),
    (1, ['--crop_size', 30], '--crop_size 30'),
    (0, ['--preprocess', 'none', '--batch_size', 2], '--preprocess none'),
    (0, ['--lr', -1], '--lr'),
    (0, ['--input_nc', 1], '--input_nc 1'),
])
def test_evaluate_checks_the_flags_as_the_script_does(tiny_runs, which, flags, says):
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[which], *flags, check=False)
    assert says in one_line(p)

def test_cyclegan_with_a_feature_network_that_gives_no_features_fails_at_start(tmp_path):
    nan = broken_inception(tmp_path, 'nan.pth', negative_variance)
    constant = broken_inception(tmp_path, 'constant.pth', no_convolutions)
    for path, says in [(nan, 'its features are not finite'),
                       (constant, 'gives the same features for different images')]:
        out = tmp_path / f'run_{path.stem}'
        p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--fid_weights', path,
                '--out_dir', out, check=False)
        assert one_line(p) == f'error: --fid_weights {path}: {says}; the file is damaged'
        assert not (out / 'ckpt.pt').exists()


# -----------------------------------------------------------------------------
# tools/bench.py: what it measures and reports, never how fast (no test asserts a speed)

BENCH_PROGRAM = os.path.join(ROOT, 'tools', 'bench.py')
BENCH_TINY = {'cyclegan': ['--ngf', '4', '--ndf', '4', '--crop_size', '32', '--load_size', '32'],
        'pixelgan': ['--netG', 'unet_128', '--crop_size', '128', '--load_size', '128', '--ngf', '4',
                     '--ndf', '4']}
FIELDS = ['ms_per_iter', 'images_per_s', 'flops_per_iter', 'flops_per_s', 'peak_mem_mib', 'memory',
          'mfu', 'peak_flops', 'math', 'device', 'dtype', 'mode', 'timed_iters']

def bench_program(*args, cwd, env=None):  # tools/bench.py as a user runs it, in a new process
    return subprocess.run([sys.executable, BENCH_PROGRAM, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)

def test_bench_help_prints_the_usage_and_exits_0(tmp_path):
    p = bench_program('--help', cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith('usage: python tools/bench.py cyclegan|pixelgan')
    assert '--loop' in p.stdout and '--max_iters' in p.stdout

def test_bench_script_help_lists_the_scripts_flags_and_benchs_own(capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(['cyclegan', '--help'])
    assert exit.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith('usage: python tools/bench.py cyclegan')
    assert '--lambda_identity' in out and "bench's own flags" in out and '--loop' in out
    assert out.count('--max_iters N ') == 1  # bench's, in place of the script's
    assert 'stop after this many iterations' not in out

@pytest.mark.parametrize('argv, says', [
    (['cyclegan', '--max_iters', '0'], 'error: --max_iters 0: nothing to time; give 1 or more'),
    (['pixelgan', '--loop', '--max_iters', '0'],
     'error: --max_iters 0: nothing to time; give 1 or more'),
    (['cyclegan', '--loop', '--resume'],
     'error: --loop times a new run in a temporary folder; drop --resume'),
    ([], 'error: name the script first: python tools/bench.py cyclegan|pixelgan [flags]')])
def test_bench_mistakes_are_one_line_before_any_work(argv, says):
    with pytest.raises(SystemExit) as exit:
        bench.main(argv)
    assert exit.value.code == says

@pytest.mark.parametrize('script', ['cyclegan', 'pixelgan'])
def test_bench_step_prints_each_figure_then_all_as_one_json_line(capsys, script):
    result = bench.main([script, *BENCH_TINY[script], '--max_iters', '2', '--device', 'cpu',
                         '--dtype', 'float32'])
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1]) == result and list(result) == FIELDS
    assert [line.split(': ')[0] for line in lines[:-1]] == FIELDS
    assert result['ms_per_iter'] > 0 and result['flops_per_iter'] > 0
    assert result['flops_per_s'] > 0 and result['peak_mem_mib'] > 0
    assert result['device'] == 'cpu' and result['dtype'] == 'float32'
    assert result['mfu'] is None and result['peak_flops'] is None  # no known peak on a CPU
    assert result['mode'] == 'step' and result['timed_iters'] == 2
    assert result['memory'] == 'process peak RSS'

@pytest.mark.parametrize('script', ['cyclegan', 'pixelgan'])
def test_bench_loop_gives_ms_per_iter_and_leaves_no_files(tmp_path, script):
    cwd, tmp = tmp_path / 'cwd', tmp_path / 'tmp'
    cwd.mkdir()
    tmp.mkdir()
    env = {**os.environ, 'TMPDIR': str(tmp)}  # where the temporary --out_dir goes
    p = bench_program(script, '--loop', *BENCH_TINY[script], '--max_iters', '2', '--device', 'cpu',
                      '--dtype', 'float32', cwd=cwd, env=env)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.splitlines()[-1])
    assert list(result) == FIELDS and len(p.stdout.splitlines()) == len(FIELDS) + 1
    assert result['mode'] == 'loop' and result['timed_iters'] == 2 and result['ms_per_iter'] > 0
    assert result['flops_per_iter'] is None and result['mfu'] is None
    assert result['device'] == 'cpu' and result['dtype'] == 'float32'
    assert 'iter 3/3' in p.stderr  # the script's progress: 1 warm-up + 2 timed iterations
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []

def test_bench_loop_says_so_when_the_run_ends_before_the_iterations_asked(tmp_path):
    from PIL import Image
    (tmp_path / 'train').mkdir()
    for i in range(2):  # two pairs, side by side: one epoch is 2 iterations
        Image.new('RGB', (256, 128), (60 * i, 90, 120)).save(tmp_path / 'train' / f'{i}.png')
    argv = ['pixelgan', '--loop', *BENCH_TINY['pixelgan'], '--dataroot', str(tmp_path),
            '--batch_size', '1', '--num_threads', '0', '--n_epochs', '1', '--n_epochs_decay', '0',
            '--max_iters', '5', '--device', 'cpu', '--dtype', 'float32']
    with pytest.raises(SystemExit) as exit:
        bench.main(argv)
    assert exit.value.code.startswith('error: --loop: the run ended at iteration 2 of 6')

@pytest.mark.parametrize('platform, ru_maxrss', [('linux', 3 * 2**20), ('darwin', 3 * 2**30)])
def test_bench_peak_rss_is_in_mib_on_linux_and_macos(monkeypatch, platform, ru_maxrss):
    usage = types.SimpleNamespace(ru_maxrss=ru_maxrss)  # KiB on Linux, bytes on macOS
    monkeypatch.setattr(bench.resource, 'getrusage', lambda who: usage)
    monkeypatch.setattr(sys, 'platform', platform)
    assert bench.peak_rss_mib() == 3 * 1024
    assert bench.memory_mib(torch.device('cpu')) == (3 * 1024, 'process peak RSS')

def test_bench_mps_memory_is_the_current_driver_allocated(monkeypatch):
    monkeypatch.setattr(torch.mps, 'driver_allocated_memory', lambda: 5 * 2**20)
    assert bench.memory_mib(torch.device('mps')) == (5, 'mps current driver-allocated')

@pytest.mark.parametrize('name, math, peak', [
    ('NVIDIA H200', 'bfloat16', 989e12), ('NVIDIA H100 80GB HBM3', 'float16', 989e12),
    ('NVIDIA H100 80GB HBM3', 'tf32', 494e12), ('NVIDIA H200', 'float32', 67e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12), ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312e12),
    ('NVIDIA A100 80GB PCIe', 'tf32', 156e12), ('NVIDIA A100-SXM4-40GB', 'float32', 19.5e12),
    ('NVIDIA L4', 'bfloat16', 121e12), ('NVIDIA L4', 'tf32', 60e12),
    ('NVIDIA L4', 'float32', 30e12),
    ('NVIDIA L40S', 'bfloat16', None), ('Tesla V100-SXM2-16GB', 'float16', None),
    ('cpu', 'float32', None), ('mps', 'bfloat16', None)])
def test_bench_peak_is_looked_up_by_gpu_name_and_the_math_that_ran(name, math, peak):
    assert bench.peak_flops(name, math) == peak

@pytest.mark.parametrize('dtype, allow_tf32, capability, math', [
    ('float32', True, (9, 0), 'tf32'), ('float32', False, (9, 0), 'float32'),
    ('float32', True, (7, 0), 'float32'), ('bfloat16', True, (9, 0), 'bfloat16')])
def test_bench_mfu_is_against_the_peak_of_the_dtype_it_ran(monkeypatch, dtype, allow_tf32,
                                                          capability, math):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device: 'NVIDIA H200')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device: capability)
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda device: 2**30)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', allow_tf32)
    result = bench.figures('step', 10, 0.5, 1, 1e12, torch.device('cuda'), dtype)
    peak = {'tf32': 494e12, 'float32': 67e12, 'bfloat16': 989e12}[math]
    assert result['math'] == math and result['peak_flops'] == peak and result['dtype'] == dtype
    assert result['mfu'] == pytest.approx(1e12 / 0.5 / peak)
    assert result['peak_mem_mib'] == 1024 and result['memory'] == 'cuda max allocated'
    assert bench.figures('step', 10, 0.5, 1, 1e12, torch.device('cpu'), dtype)['mfu'] is None

@pytest.mark.parametrize('kind, wait', [('cuda', 'cuda'), ('mps', 'mps'), ('cpu', None)])
def test_bench_waits_for_the_device_around_each_timed_step(monkeypatch, kind, wait):
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: calls.append('cuda'))
    monkeypatch.setattr(torch.mps, 'synchronize', lambda: calls.append('mps'))
    steps = []
    bench.median_seconds(lambda: steps.append(len(calls)), 4, torch.device(kind))
    assert len(steps) == bench.WARMUP + 4
    if wait is None:
        assert calls == []
    else:  # before and after each step
        assert calls == [wait] * 2 * len(steps) and steps == list(range(1, 2 * len(steps), 2))

# -----------------------------------------------------------------------------
# tools/download.py: datasets, models and the FID Inception weights from a local HTTP server
# standing in for the official hosts; SHA-256 checks, the http fallback, files never replaced,
# archives unpacked safely, and every failure one line

@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; under /short/ it announces more bytes than it sends,
    under /slow/ it trickles bytes (1 KiB each 50 ms) until the client leaves."""
    www = tmp_path / 'www'
    www.mkdir()
    class Handler(http.server.SimpleHTTPRequestHandler):
        timeout = 30  # a client that speaks no HTTP (TLS to this plain server) is let go

        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith('/short/'):
                self.send_response(200)
                self.send_header('Content-Length', '100000')
                self.end_headers()
                self.wfile.write(b'PK' + b'\0' * 1000)
            elif self.path.startswith('/slow/'):
                self.send_response(200)
                self.send_header('Content-Length', str(10 ** 8))
                self.end_headers()
                for _ in range(2400):  # two minutes at most
                    try:
                        self.wfile.write(b'\0' * 1024)
                        self.wfile.flush()
                    except OSError:  # the client left (Ctrl-C)
                        return
                    time.sleep(0.05)
            else:
                super().do_GET()
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f'http://127.0.0.1:{httpd.server_port}'
    httpd.shutdown()

def download(url, *args, cwd, check=True):
    """tools/download.py, from the mirror url (GAN_DOWNLOAD_URL; None: unset, for unpack), in
    cwd, with torch's hub folder under cwd/torch_home (never the user's)."""
    env = {k: v for k, v in os.environ.items() if k not in ('GAN_DOWNLOAD_URL', 'TORCH_HOME')}
    if url is not None:
        env['GAN_DOWNLOAD_URL'] = url
    env['TORCH_HOME'] = str(os.path.join(cwd, 'torch_home'))
    return run('tools/download.py', *args, env=env, cwd=cwd, check=check)

def last_line(p):
    """The line after the progress display (which ends on a line of its own), as the user sees it
    last: status 1, no traceback."""
    assert p.returncode == 1 and 'Traceback' not in p.out, p.out
    return p.stderr.strip().splitlines()[-1]

def download_here(*args):
    """main(argv) in this process, as its __main__ block runs it: None, or the DownloadError as
    its one line (status 1). For the tests that monkeypatch the module (its SHA-256 table)."""
    try:
        download_tool.main([str(a) for a in args])
    except download_tool.DownloadError as e:
        return f'error: {e}'
    return None

def sha256(data):
    return hashlib.sha256(data).hexdigest()

def serve(www, url, data):
    """data at url's path under www (the server's files)."""
    path = www / url.split('/', 3)[3]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

def fid_url():
    return download_tool.FID_URL

def horse2zebra_url():
    return download_tool.known_urls('model')['horse2zebra']

# the FID Inception weights and the SHA-256 checks

def test_fid_inception_weights_of_the_known_sha256_are_kept_where_fid_looks_for_them(
        server, tmp_path, monkeypatch):
    www, url = server
    weights = os.urandom(5000)
    serve(www, fid_url(), weights)
    monkeypatch.setitem(download_tool.SHA256, fid_url(), sha256(weights))
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.chdir(tmp_path)
    assert download_here('model', 'fid_inception') is None
    kept = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / fid.WEIGHTS_NAME
    assert fid.default_weights() == str(kept) and kept.read_bytes() == weights
    assert os.listdir(kept.parent) == [fid.WEIGHTS_NAME]  # no temporary leftovers
    assert download_here('model', 'fid_inception', '--root', tmp_path / 'mine') is None
    assert (tmp_path / 'mine' / fid.WEIGHTS_NAME).read_bytes() == weights
    assert 'fid_inception' in download(url, 'model', '--list', cwd=tmp_path).stdout.split()

def test_fid_inception_weights_with_one_byte_changed_are_refused_and_nothing_is_kept(
        server, tmp_path, monkeypatch):
    www, url = server
    weights = os.urandom(5000)
    serve(www, fid_url(), weights[:100] + bytes([weights[100] ^ 1]) + weights[101:])
    monkeypatch.setitem(download_tool.SHA256, fid_url(), sha256(weights))
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    line = download_here('model', 'fid_inception', '--root', tmp_path / 'mine')
    assert line == (f'error: {url}/{fid_url().split("/", 3)[3]}: its SHA-256 is not the known '
                    f'one (a damaged or other file); nothing was kept; try again, without '
                    f'GAN_DOWNLOAD_URL if set')
    assert os.listdir(tmp_path / 'mine') == []
    # as a program, against the table as it ships: these bytes are not the published file
    p = download(url, 'model', 'fid_inception', cwd=tmp_path, check=False)
    assert 'its SHA-256 is not the known one' in last_line(p)
    assert os.listdir(tmp_path / 'torch_home' / 'hub' / 'checkpoints') == []

def test_the_known_sha256_table_has_the_published_fid_weights_and_official_urls_only():
    assert download_tool.SHA256[fid_url()] == fid.WEIGHTS_SHA256
    official = {**download_tool.known_urls('dataset'), **download_tool.known_urls('model')}
    assert set(download_tool.SHA256) <= set(official.values())
    assert fid_url() == ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                         'pt_inception-2015-12-05-6726825d.pth')

def test_a_dataset_of_a_known_sha256_is_checked_too(server, tmp_path, monkeypatch):
    www, url = server
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
    official = download_tool.known_urls('dataset')['horse2zebra']
    serve(www, official, archive.getvalue())
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url)
    monkeypatch.setitem(download_tool.SHA256, official, sha256(b'another archive'))
    line = download_here('dataset', 'horse2zebra', '--root', tmp_path / 'datasets')
    assert 'its SHA-256 is not the known one' in line
    assert os.listdir(tmp_path / 'datasets') == []  # no archive, no temporary folder
    monkeypatch.setitem(download_tool.SHA256, official, sha256(archive.getvalue()))
    assert download_here('dataset', 'horse2zebra', '--root', tmp_path / 'datasets') is None
    assert (tmp_path / 'datasets' / 'horse2zebra' / 'trainA' / '1.jpg').read_bytes() == b'a'

# -----------------------------------------------------------------------------
# the hosts: https, a mirror, http only where a SHA-256 vouches for the file

def test_official_downloads_go_over_https():
    for kind in ('dataset', 'model'):
        for name, url in download_tool.known_urls(kind).items():
            assert url.startswith(('https://efrosgans.eecs.berkeley.edu/',
                                   'https://github.com/mseitzer/')), name

def test_the_mirror_replaces_scheme_and_host_and_keeps_the_official_paths(
        server, tmp_path, monkeypatch):
    www, url = server
    paths = {('dataset', 'horse2zebra'): 'cyclegan/datasets/horse2zebra.zip',
             ('dataset', 'facades'): 'pix2pix/datasets/facades.tar.gz',
             ('model', 'horse2zebra'): 'cyclegan/pretrained_models/horse2zebra.pth',
             ('model', 'edges2shoes'): 'pix2pix/models-pytorch/edges2shoes.pth',
             ('model', 'fid_inception'): 'mseitzer/pytorch-fid/releases/download/fid_weights/'
                                         'pt_inception-2015-12-05-6726825d.pth'}
    for path in paths.values():
        (www / path).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(www / paths['dataset', 'horse2zebra'], 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
    (tmp_path / 'src' / 'facades').mkdir(parents=True)
    (tmp_path / 'src' / 'facades' / 'train.jpg').write_bytes(b'b')
    with tarfile.open(www / paths['dataset', 'facades'], 'w:gz') as t:
        t.add(tmp_path / 'src' / 'facades', arcname='facades')
    for name in ('horse2zebra', 'edges2shoes', 'fid_inception'):
        (www / paths['model', name]).write_bytes(name.encode())
    monkeypatch.setitem(download_tool.SHA256, fid_url(), sha256(b'fid_inception'))
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url + '/')  # (a trailing slash is no second one)
    for kind, name in paths:
        assert download_here(kind, name, '--root', tmp_path / kind) is None
    assert (tmp_path / 'dataset' / 'horse2zebra' / 'trainA' / '1.jpg').read_bytes() == b'a'
    assert (tmp_path / 'dataset' / 'facades' / 'train.jpg').read_bytes() == b'b'
    assert (tmp_path / 'model' / 'edges2shoes.pth').read_bytes() == b'edges2shoes'
    assert (tmp_path / 'model' / fid.WEIGHTS_NAME).read_bytes() == b'fid_inception'
    monkeypatch.setenv('GAN_DOWNLOAD_URL', 'https://mirror.example/gans')
    assert download_tool.mirrored(fid_url()) == 'https://mirror.example/gans/' + paths[
        'model', 'fid_inception']

def test_http_is_tried_after_https_only_for_a_connection_failure_of_a_file_of_known_sha256():
    fallback, url = download_tool.http_fallback, 'https://host/cyclegan/x.pth'
    for error in (ConnectionRefusedError(), TimeoutError(), ssl.SSLCertVerificationError()):
        assert fallback(url, 'ab12', error) == 'http://host/cyclegan/x.pth'
    assert fallback(url, None, ConnectionRefusedError()) is None  # nothing would vouch for it
    not_found = urllib.error.HTTPError(url, 404, 'Not Found', {}, None)  # an answer
    assert fallback(url, 'ab12', not_found) is None
    assert fallback('http://host/cyclegan/x.pth', 'ab12', ConnectionRefusedError()) is None

def test_https_that_cannot_connect_falls_back_to_http_only_with_a_known_sha256(
        server, tmp_path, monkeypatch, capsys):
    www, url = server
    tls = url.replace('http://', 'https://')  # TLS to a plain HTTP server: a TLS error
    model = os.urandom(3000)
    served = serve(www, horse2zebra_url(), model)
    where = f'{tls}/cyclegan/pretrained_models/horse2zebra.pth'
    p = download(tls, 'model', 'horse2zebra', cwd=tmp_path, check=False)
    line = one_line(p)
    assert line.startswith(f'error: {where}: download failed (')
    assert line.endswith('; fetch it by hand into pretrained/horse2zebra.pth')
    assert os.listdir(tmp_path / 'pretrained') == []
    monkeypatch.setenv('GAN_DOWNLOAD_URL', tls)
    monkeypatch.setitem(download_tool.SHA256, horse2zebra_url(), sha256(model))
    assert download_here('model', 'horse2zebra', '--root', tmp_path / 'kept') is None
    assert (tmp_path / 'kept' / 'horse2zebra.pth').read_bytes() == model
    assert f"{where}: no https connection" in capsys.readouterr().err
    served.write_bytes(model[:-1] + b'x')  # over http, the check is what vouches
    line = download_here('model', 'horse2zebra', '--root', tmp_path / 'refused')
    assert line.startswith(f'error: {url}/cyclegan/pretrained_models/horse2zebra.pth: its SHA-256')
    assert os.listdir(tmp_path / 'refused') == []

# -----------------------------------------------------------------------------
# nothing the user has is replaced

def test_an_existing_model_file_or_dangling_link_is_refused_before_any_download(
        server, tmp_path):
    www, url = server
    serve(www, horse2zebra_url(), b'new weights')
    (tmp_path / 'pretrained').mkdir()
    mine = tmp_path / 'pretrained' / 'horse2zebra.pth'
    mine.write_bytes(b'my weights')
    p = download(url, 'model', 'horse2zebra', cwd=tmp_path, check=False)
    assert one_line(p) == ('error: pretrained/horse2zebra.pth exists; remove it to download it '
                           'again')
    assert mine.read_bytes() == b'my weights' and os.listdir(mine.parent) == ['horse2zebra.pth']
    mine.unlink()
    mine.symlink_to(tmp_path / 'nowhere.pth')
    p = download(url, 'model', 'horse2zebra', cwd=tmp_path, check=False)
    assert one_line(p) == ('error: pretrained/horse2zebra.pth exists; remove it to download it '
                           'again')
    assert os.readlink(mine) == str(tmp_path / 'nowhere.pth')
    assert not (tmp_path / 'nowhere.pth').exists()
    hub = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    (hub / fid.WEIGHTS_NAME).write_bytes(b'the weights')
    p = download(url, 'model', 'fid_inception', cwd=tmp_path, check=False)
    assert one_line(p) == f'error: {hub / fid.WEIGHTS_NAME} exists; remove it to download it again'
    assert (hub / fid.WEIGHTS_NAME).read_bytes() == b'the weights'

# -----------------------------------------------------------------------------
# one line, never a traceback

def test_unpack_of_a_truncated_tar_gz_is_one_line_and_keeps_nothing(tmp_path):
    (tmp_path / 'src' / 'facades' / 'train').mkdir(parents=True)
    for i in range(3):
        (tmp_path / 'src' / 'facades' / 'train' / f'{i}.jpg').write_bytes(os.urandom(100000))
    with tarfile.open(tmp_path / 'facades.tar.gz', 'w:gz') as t:
        t.add(tmp_path / 'src' / 'facades', arcname='facades')
    whole = (tmp_path / 'facades.tar.gz').read_bytes()
    for size in (100, len(whole) // 2):  # in its first block; in the middle of a member
        (tmp_path / 'cut.tar.gz').write_bytes(whole[:size])
        p = download(None, 'unpack', 'cut.tar.gz', cwd=tmp_path, check=False)
        assert one_line(p).startswith('error: cut.tar.gz: not a readable zip or tar archive (')
        assert os.listdir(tmp_path / 'datasets') == []

def test_a_root_that_is_a_file_is_one_line(server, tmp_path):
    www, url = server
    serve(www, horse2zebra_url(), b'weights')
    (tmp_path / 'afile').write_text('not a folder')
    with zipfile.ZipFile(tmp_path / 'one.zip', 'w') as z:
        z.writestr('1.jpg', b'a')
    for args in (('model', 'horse2zebra'), ('dataset', 'horse2zebra'), ('unpack', 'one.zip')):
        p = download(url, *args, '--root', 'afile', cwd=tmp_path, check=False)
        assert one_line(p) == 'error: afile: a file, not a folder; give --root a folder'
    assert (tmp_path / 'afile').read_text() == 'not a folder'

@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0,
                    reason='root writes in a read-only folder anyway (and Windows has no mode '
                           'bits for it)')
def test_a_read_only_root_is_one_line(server, tmp_path):
    www, url = server
    serve(www, horse2zebra_url(), b'weights')
    with zipfile.ZipFile(tmp_path / 'one.zip', 'w') as z:
        z.writestr('1.jpg', b'a')
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro').chmod(0o555)
    try:
        for args in (('model', 'horse2zebra'), ('dataset', 'horse2zebra'), ('unpack', 'one.zip')):
            p = download(url, *args, '--root', 'ro', cwd=tmp_path, check=False)
            assert one_line(p) == ('error: ro: cannot write in it (Permission denied); give '
                                   '--root a folder you can write in')
    finally:
        (tmp_path / 'ro').chmod(0o755)
    assert os.listdir(tmp_path / 'ro') == []

def test_a_folder_that_refuses_a_temporary_folder_is_one_line_even_as_root(tmp_path, monkeypatch):
    def refused(*a, **kw):  # as mkdir in a read-only folder does for a user who is not root
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    with zipfile.ZipFile(tmp_path / 'one.zip', 'w') as z:
        z.writestr('1.jpg', b'a')
    monkeypatch.setattr(download_tool.tempfile, 'mkdtemp', refused)
    with pytest.raises(download_tool.DownloadError) as e:
        download_tool.unpack(str(tmp_path / 'one.zip'), root=str(tmp_path / 'ro'))
    assert str(e.value) == (f'{tmp_path / "ro"}: cannot write in it (Permission denied); give '
                            f'--root a folder you can write in')

def test_a_full_disk_during_unpack_is_said_as_such_and_keeps_nothing(tmp_path, monkeypatch):
    def full(*a, **kw):  # what writing the next file raises on a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with zipfile.ZipFile(tmp_path / 'horse2zebra.zip', 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
    (tmp_path / 'src' / 'facades').mkdir(parents=True)
    (tmp_path / 'src' / 'facades' / '1.jpg').write_bytes(b'b')
    with tarfile.open(tmp_path / 'facades.tar.gz', 'w:gz') as t:
        t.add(tmp_path / 'src' / 'facades', arcname='facades')
    monkeypatch.setattr(shutil, 'copyfileobj', full)  # zipfile's copy
    monkeypatch.setattr(tarfile, 'copyfileobj', full)  # tarfile's
    for archive in ('horse2zebra.zip', 'facades.tar.gz'):
        with pytest.raises(download_tool.DownloadError) as e:
            download_tool.unpack(str(tmp_path / archive), root=str(tmp_path / 'datasets'))
        assert str(e.value) == (f'{tmp_path / archive}: could not unpack it into '
                                f'{tmp_path / "datasets"} (No space left on device); nothing '
                                f'was kept')
        assert os.listdir(tmp_path / 'datasets') == []

def test_unpack_refuses_a_model_file(tmp_path):
    torch.save({'w': torch.ones(2)}, tmp_path / 'latest_net_G.pth')
    shutil.copy(tmp_path / 'latest_net_G.pth', tmp_path / 'weights.zip')  # a zip, of torch.save
    for model in ('latest_net_G.pth', 'weights.zip'):
        p = download(None, 'unpack', model, cwd=tmp_path, check=False)
        assert one_line(p) == (f'error: {model}: a model file, not a dataset archive; put it in '
                               f'pretrained/ and give it to --ckpt')
    assert not (tmp_path / 'datasets').exists()
    (tmp_path / 'old.pt').write_bytes(b'\x80\x02}q\x00.')  # a pickle, of torch before 1.6
    with pytest.raises(download_tool.DownloadError, match='a model file, not a dataset archive'):
        download_tool.unpack(str(tmp_path / 'old.pt'), root=str(tmp_path / 'datasets'))

def test_a_failed_model_download_says_to_fetch_it_by_hand_not_to_unpack_it(server, tmp_path):
    _, url = server  # nothing is served: a 404
    p = download(url, 'model', 'horse2zebra', cwd=tmp_path, check=False)
    assert one_line(p) == (f'error: {url}/cyclegan/pretrained_models/horse2zebra.pth: download '
                           f'failed (HTTP Error 404: File not found); fetch it by hand into '
                           f'pretrained/horse2zebra.pth')
    assert os.listdir(tmp_path / 'pretrained') == []
    p = download('http://127.0.0.1:9', 'model', 'fid_inception', cwd=tmp_path, check=False)
    line = one_line(p)
    assert 'unpack' not in line and line.endswith(
        f'; fetch it by hand into {tmp_path / "torch_home" / "hub" / "checkpoints"}/'
        f'{fid.WEIGHTS_NAME}')

@pytest.mark.parametrize('kind, folder', [('model', 'pretrained'), ('dataset', 'datasets')])
def test_ctrl_c_during_a_download_exits_130_with_one_line_and_keeps_nothing(
        server, tmp_path, kind, folder):
    _, url = server
    env = {**os.environ, 'GAN_DOWNLOAD_URL': url + '/slow', 'TORCH_HOME': str(tmp_path / 'th')}
    command = [sys.executable, os.path.join(ROOT, 'tools', 'download.py'), kind, 'horse2zebra']
    with open(tmp_path / 'stderr.txt', 'w') as stderr:
        p = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=stderr)
        try:
            deadline = time.time() + 90
            while 'MiB/s' not in (tmp_path / 'stderr.txt').read_text():  # under way
                assert time.time() < deadline and p.poll() is None, 'no download under way'
                time.sleep(0.1)
            p.send_signal(signal.SIGINT)
            assert p.wait(timeout=60) == 130
        finally:
            p.kill()
    err = (tmp_path / 'stderr.txt').read_text()
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == 'interrupted; no half-written file was kept'
    assert os.listdir(tmp_path / folder) == []  # no partial file, no temporary folder

# -----------------------------------------------------------------------------
# what worked before: datasets into the layout, models, failures that leave nothing, hostile
# archives

def test_download_unpacks_zip_and_tar_into_the_layout_the_scripts_read(server, tmp_path):
    www, url = server
    (www / 'cyclegan' / 'datasets').mkdir(parents=True)
    with zipfile.ZipFile(www / 'cyclegan' / 'datasets' / 'horse2zebra.zip', 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
        z.writestr('horse2zebra/testB/2.jpg', b'b')
    (www / 'pix2pix' / 'datasets').mkdir(parents=True)
    src = tmp_path / 'src' / 'facades' / 'train'
    src.mkdir(parents=True)
    (src / '1.jpg').write_bytes(b'ab')
    with tarfile.open(www / 'pix2pix' / 'datasets' / 'facades.tar.gz', 'w:gz') as t:
        t.add(tmp_path / 'src' / 'facades', arcname='facades')
    root = tmp_path / 'datasets'
    p = download(url, 'dataset', 'horse2zebra', '--root', root, cwd=tmp_path)
    assert (root / 'horse2zebra' / 'trainA' / '1.jpg').read_bytes() == b'a'
    assert 'MiB/s' in p.stderr  # the progress display
    download(url, 'dataset', 'facades', '--root', root, cwd=tmp_path)
    assert (root / 'facades' / 'train' / '1.jpg').read_bytes() == b'ab'
    assert sorted(os.listdir(root)) == ['facades', 'horse2zebra']  # no temporary leftovers
    p = download(url, 'dataset', 'facades', '--root', root, cwd=tmp_path, check=False)
    assert one_line(p) == f'error: {root / "facades"} exists; remove it to download it again'
    names = download(url, 'dataset', '--list', cwd=tmp_path).stdout.split()
    assert {'horse2zebra', 'facades', 'cyclegan_facades', 'edges2shoes', 'mini_pix2pix',
            'ae_photos'} <= set(names)

def test_download_model_saves_the_official_generator_file(server, tmp_path):
    www, url = server
    served = serve(www, horse2zebra_url(), b'')
    torch.save({'model.1.weight': torch.ones(4, 3, 7, 7)}, served)
    p = download(url, 'model', 'horse2zebra', '--root', tmp_path / 'pretrained', cwd=tmp_path)
    assert p.stdout.strip() == str(tmp_path / 'pretrained' / 'horse2zebra.pth')
    assert (tmp_path / 'pretrained' / 'horse2zebra.pth').read_bytes() == served.read_bytes()
    assert os.listdir(tmp_path / 'pretrained') == ['horse2zebra.pth']
    names = download(url, 'model', '--list', cwd=tmp_path).stdout.split()
    assert {'horse2zebra', 'style_monet', 'facades_label2photo', 'cyclegan_facades_label2photo',
            'edges2shoes', 'day2night', 'fid_inception'} <= set(names)

@pytest.mark.parametrize('kind', ['dataset', 'model'])
@pytest.mark.parametrize('case, says', [('404', 'download failed'), ('short', 'cut short'),
                                        ('offline', 'download failed')])
def test_failed_downloads_leave_nothing_that_looks_finished(
        server, tmp_path, monkeypatch, capsys, kind, case, says):
    _, url = server  # nothing is served: every file is a 404
    url = {'404': url, 'short': url + '/short', 'offline': 'http://127.0.0.1:9'}[case]
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url)
    folder = tmp_path / kind
    line = download_here(kind, 'horse2zebra', '--root', folder)
    assert line.startswith(f'error: {url}') and says in line
    if kind == 'dataset' and case != 'short':
        assert line.endswith("fetch it by hand and run 'python tools/download.py unpack FILE'")
    if kind == 'model' and case != 'short':  # a .pth is no archive: no unpack for it
        assert line.endswith(f'; fetch it by hand into {folder / "horse2zebra.pth"}')
    assert os.listdir(folder) == []  # no partial file, no half-unpacked folder
    if case == 'short':  # the progress display ends its line: the error is a line of its own
        assert capsys.readouterr().err.endswith('\n')

def test_download_errors_are_one_line_for_the_user(tmp_path):
    p = download('http://127.0.0.1:9', 'dataset', 'horse2zebra', cwd=tmp_path, check=False)
    assert one_line(p).startswith(
        'error: http://127.0.0.1:9/cyclegan/datasets/horse2zebra.zip: download failed')

def test_hostile_archives_are_refused_and_write_nothing_outside(tmp_path):
    slip = tmp_path / 'slip.zip'
    with zipfile.ZipFile(slip, 'w') as z:
        z.writestr('data/trainA/1.jpg', b'a')
        z.writestr('../../evil.txt', b'x')
    link = tmp_path / 'link.tar'
    with tarfile.open(link, 'w') as t:
        info = tarfile.TarInfo('data/trainA/passwd')
        info.type = tarfile.SYMTYPE
        info.linkname = '/etc/passwd'
        t.addfile(info)
    absolute = tmp_path / 'abs.tar'
    with tarfile.open(absolute, 'w') as t:
        info = tarfile.TarInfo('/tmp/evil.txt')
        info.size = 1
        t.addfile(info, io.BytesIO(b'x'))
    device = tmp_path / 'dev.tar'
    with tarfile.open(device, 'w') as t:
        info = tarfile.TarInfo('data/null')
        info.type = tarfile.CHRTYPE
        t.addfile(info)
    for archive in (slip, link, absolute, device):
        root = tmp_path / f'datasets_{archive.stem}'
        with pytest.raises(download_tool.DownloadError, match='unsafe member'):
            download_tool.unpack(str(archive), root=str(root))
        assert os.listdir(root) == []
    assert not (tmp_path / 'evil.txt').exists() and not (tmp_path.parent / 'evil.txt').exists()

def test_unpack_of_a_non_archive_a_nameless_archive_or_a_bare_file(tmp_path):
    (tmp_path / 'notes.txt').write_text('not an archive')
    with zipfile.ZipFile(tmp_path / '..zip', 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
    with zipfile.ZipFile(tmp_path / 'one.zip', 'w') as z:
        z.writestr('1.jpg', b'a')
    (tmp_path / 'datasets').mkdir()
    for archive, says in (('notes.txt', 'error: notes.txt: not a zip or tar archive'),
                          ('..zip', 'error: ..zip: no dataset name in this file name; rename it '
                                    '(NAME.zip)')):
        p = download(None, 'unpack', archive, cwd=tmp_path, check=False)
        assert one_line(p) == says
    assert os.listdir(tmp_path / 'datasets') == []
    p = download(None, 'unpack', 'one.zip', cwd=tmp_path)
    assert p.stdout.strip() == os.path.join('datasets', 'one')
    assert (tmp_path / 'datasets' / 'one' / '1.jpg').read_bytes() == b'a'  # named after the archive

# -----------------------------------------------------------------------------
# tools/to_tensorboard.py: log.jsonl as TensorBoard scalars

@needs_tensorboard
def test_tensorboard_gets_the_scalars_of_log_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 4, '--out_dir', tmp_path)
    run('tools/to_tensorboard.py', tmp_path)
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    assert {'G_A', 'cycle_A', 'lr', 'psnr_AtoB'} <= set(events.Tags()['scalars'])


@needs_tensorboard
def test_to_tensorboard_leaves_the_users_own_files_in_its_folder(tmp_path, tiny_runs):
    shutil.copy(tiny_runs[0].parent / 'log.jsonl', tmp_path / 'log.jsonl')
    (tmp_path / 'tensorboard').mkdir()
    (tmp_path / 'tensorboard' / 'notes.txt').write_text('my notes\n')
    (tmp_path / 'tensorboard' / 'another.ckpt').write_bytes(b'\x00not mine to touch\xff')
    mine = files_of(tmp_path / 'tensorboard')
    for _ in range(2):  # a rerun too
        run('tools/to_tensorboard.py', tmp_path)
    after = files_of(tmp_path / 'tensorboard')
    assert {f: after[f] for f in mine} == mine
    assert set(after) == {*mine, to_tensorboard.EVENTS}

@needs_tensorboard
@pytest.mark.parametrize('line', [
    b'{"step": 3, "G_A": 1.',
    b'{"step": 3, "note": "\xff\xfe"}',
    b'{"G_A": 1.0}',
    b'{"step": "3"}',
], ids=['truncated', 'not_utf8', 'no_step', 'step_a_string'])
def test_a_damaged_log_line_is_one_line_naming_its_number_and_changes_nothing(
        tmp_path, tiny_runs, line):
    good = (tiny_runs[0].parent / 'log.jsonl').read_bytes().splitlines(keepends=True)
    (tmp_path / 'log.jsonl').write_bytes(b''.join(good))
    (tmp_path / 'tensorboard').mkdir()
    (tmp_path / 'tensorboard' / 'notes.txt').write_text('my notes\n')
    run('tools/to_tensorboard.py', tmp_path)  # an earlier events file
    before = files_of(tmp_path / 'tensorboard')
    (tmp_path / 'log.jsonl').write_bytes(b''.join([good[0], line + b'\n', *good[1:]]))
    p = run('tools/to_tensorboard.py', tmp_path, check=False)
    assert 'line 2' in one_line(p)
    assert files_of(tmp_path / 'tensorboard') == before


# -----------------------------------------------------------------------------
# reliability: interruption, files that break, NaN, unwritable outputs, and the catalogue of
# mistakes (each one line naming what to do, and no file lost)

def test_a_second_run_on_a_busy_out_dir_is_refused_and_sigterm_saves_the_first(tmp_path):
    command = [sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN),
               '--max_iters', '100000', '--save_latest_freq', '100000', '--out_dir', str(tmp_path)]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: log_lines(tmp_path) >= 2, p, 'training to log')
    if os.name == 'posix':  # (the lock is POSIX's lockf)
        second = run('pixelgan.py', '--out_dir', tmp_path, check=False)
        assert second.returncode == 1 and second.stderr == (
            f"error: --out_dir {tmp_path}: another run is writing there; give another one\n")
        args_lines = [line for line in (tmp_path / 'log.jsonl').read_text().splitlines()
                      if '"args"' in line]
        assert len(args_lines) == 1  # the second wrote nothing
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0 and 'interrupted: saved' in out and '--resume' in out
    step = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step']
    assert step >= 2
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path, '--max_iters', step + 1)
    assert f'iteration {step}' in p.out

def test_sigterm_to_the_whole_process_group_with_loader_workers_saves(tmp_path):
    """What timeout, Slurm's scancel and systemd send: the loader workers get the signal too."""
    command = [sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN),
               '--num_threads', '2', '--max_iters', '100000', '--save_latest_freq', '100000',
               '--out_dir', str(tmp_path)]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    wait_until(lambda: log_lines(tmp_path) >= 2, p, 'training to log')
    os.killpg(p.pid, signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130 and 'interrupted: saved' in out and 'Traceback' not in out, out
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] >= 2

def test_sigterm_as_the_loader_workers_start_is_one_of_start_up(tmp_path):
    """A SIGTERM to the group as the first epoch's workers start (here: just before the loader sets
    its SIGCHLD handler, which a stop replaces) comes before the stop handlers, as at start-up:
    nothing was trained, the run ends by the signal with no traceback, and the checkpoint it
    claimed at iteration 0 loads."""
    code = ("import os, signal, sys\n"
            "import torch.utils.data._utils.signal_handling as handling\n"
            "set_handler = handling._set_SIGCHLD_handler\n"
            "def signal_first():\n"
            "    os.killpg(0, signal.SIGTERM)\n"
            "    set_handler()\n"
            "handling._set_SIGCHLD_handler = signal_first\n"
            "import cyclegan\n"
            "cyclegan.main(sys.argv[1:])\n")
    command = [sys.executable, '-c', code, *map(str, TINY_CYCLEGAN), '--num_threads', '2',
               '--max_iters', '100000', '--out_dir', str(tmp_path)]
    p = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                       start_new_session=True)  # (its own group: the signal stays in it)
    assert p.returncode == -signal.SIGTERM and 'Traceback' not in p.stderr, p.stderr
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 0

def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    ckpt_path = tmp_path / 'ckpt.pt'
    for attempt in range(3):
        args = ['--resume'] if attempt else TINY_CYCLEGAN
        command = [sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, args),
                   '--max_iters', '100000', '--save_latest_freq', '1', '--out_dir', str(tmp_path)]
        p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before, mtime = 0, 0
        if attempt:
            before = torch.load(ckpt_path, weights_only=True)['step']
            mtime = os.path.getmtime(ckpt_path)
        def saved():  # an iteration by this process (it saves at every one)
            return (ckpt_path.exists() and os.path.getmtime(ckpt_path) != mtime
                    and torch.load(ckpt_path, weights_only=True)['step'] > before)
        wait_until(saved, p, 'a checkpoint')
        time.sleep(rng.uniform(0, 1.0))
        p.kill()
        p.communicate(timeout=60)
        ckpt = torch.load(ckpt_path, weights_only=True)  # never half-written
        assert ckpt['step'] > before
        assert ckpt['G_A'].keys() == cyclegan.ResnetGenerator(ngf=4, n_blocks=6).state_dict().keys()

def test_bad_dataroot_stops_before_training_with_one_line(tmp_path):
    make_unpaired(tmp_path)
    (tmp_path / 'trainB' / '1.png').write_bytes(b'\x89PNG broken')
    p = run('cyclegan.py', '--dataroot', tmp_path, *TINY_CYCLEGAN, '--max_iters', 1,
            '--out_dir', tmp_path / 'o', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.out
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'trainB' / '1.png'}: cannot read image")
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()

def test_a_file_that_breaks_mid_run_is_one_line_and_the_last_checkpoint_stays(tmp_path):
    make_unpaired(tmp_path / 'data', n=2)
    bad = tmp_path / 'data' / 'trainA' / '1.png'
    good = bad.read_bytes()
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36,
        '--max_iters', 2, '--out_dir', tmp_path / 'o')
    before = (tmp_path / 'o' / 'ckpt.pt').read_bytes()
    bad.write_bytes(good[:len(good) // 2])  # the header is fine, the pixels are not: met on loading
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / 'o', '--max_iters', 6,
            '--num_threads', 1, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.out
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: cannot read image")
    assert (tmp_path / 'o' / 'ckpt.pt').read_bytes() == before  # the last checkpoint, whole
    saved = 2
    bad.write_bytes(good)
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / 'o', '--max_iters', 6)
    assert f'from iteration {saved}' in p.out
    assert torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] == 6

def test_resuming_a_damaged_checkpoint_is_one_line(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'run')
    ckpt = torch.load(tmp_path / 'run' / 'ckpt.pt', weights_only=True)
    renamed = {k + '_old': v for k, v in ckpt['G_A'].items()}
    groups = {**ckpt['opt_D'], 'param_groups': ckpt['opt_D']['param_groups'] * 2}
    damaged = {'renamed': ({**ckpt, 'G_A': renamed},
                           'its G_A does not load (Error(s) in loading state_dict for '
                           'ResnetGenerator: Missing key(s)'),
               'misshaped': ({**ckpt, 'D_B': {**ckpt['D_B'], 'model.0.weight': torch.zeros(1)}},
                             'its D_B does not load'),
               'groups': ({**ckpt, 'opt_D': groups}, 'its opt_D does not load')}
    for name, (obj, says) in damaged.items():
        (tmp_path / name).mkdir()
        torch.save(obj, tmp_path / name / 'ckpt.pt')
        line = one_line(run('cyclegan.py', '--resume', '--out_dir', tmp_path / name, check=False))
        assert line.startswith(f"error: {tmp_path / name / 'ckpt.pt'}: {says}")

def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step, calls = cyclegan.train_step, []
    def step_that_diverges(*a, **kw):
        loss = real_step(*a, **kw)
        calls.append(1)
        if len(calls) >= 3:  # from the third on, as a run that diverges
            return {k: v * float('nan') for k, v in loss.items()}
        return loss
    monkeypatch.setattr(cyclegan, 'train_step', step_that_diverges)
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 6, '--out_dir', tmp_path, check=False)
    assert 'the loss became NaN or infinite by iteration 4' in one_line(p)  # a progress line
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 2 and all(torch.isfinite(v).all() for v in ckpt['G_A'].values())

def test_nan_weights_are_never_saved(tmp_path, monkeypatch):
    real_step, calls = cyclegan.train_step, []
    def step_that_breaks_the_weights(G, *a, **kw):
        loss = real_step(G, *a, **kw)
        calls.append(1)
        if len(calls) == 4:  # a save step; the losses reported were computed before the update
            next(G['G_A'].parameters()).data.fill_(float('nan'))
        return loss
    monkeypatch.setattr(cyclegan, 'train_step', step_that_breaks_the_weights)
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 6, '--eval_freq', 100,
            '--out_dir', tmp_path, check=False)
    assert 'weights became NaN or infinite by iteration 4' in one_line(p)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2

def test_an_unwritable_output_folder_fails_before_training(tmp_path):
    (tmp_path / 'file').write_text('')
    out = tmp_path / 'file' / 'out'
    for script in ('cyclegan.py', 'pixelgan.py'):
        p = run(script, '--out_dir', out, '--max_iters', 1, check=False)
        assert p.returncode == 1 and 'iter 1' not in p.out
        assert p.stderr.strip().splitlines()[-1].startswith(
            f"error: --out_dir {out}: cannot write log.jsonl there")
    save_image(str(tmp_path / 'a.png'))
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    p = run('tools/translate.py', tmp_path / 'a.png', '--ckpt', tmp_path / 'g.pth',
            '--results_dir', tmp_path / 'file' / 'r', check=False)
    assert p.returncode == 1 and '--results_dir' in p.out and 'Traceback' not in p.out

def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    cyclegan.save_file(functools.partial(torch.save, {'step': 1}), path, replace=True)
    def disk_full(f):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')
    with pytest.raises(SystemExit, match='could not write .*No space left on device.*replaced'):
        cyclegan.save_file(disk_full, path, replace=True)
    assert torch.load(path, weights_only=True) == {'step': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']

def make_catalogue_files(tmp):
    """An earlier run, a pretrained file, an input image, and broken weight files."""
    (tmp / 'run').mkdir()
    torch.save({'step': 4000}, tmp / 'run' / 'ckpt.pt')
    torch.save(official_resnet_state_dict(), tmp / 'pretrained.pth')
    save_image(str(tmp / 'photos' / 'a.png'))
    (tmp / 'empty.pt').write_bytes(b'')
    torch.save(official_resnet_state_dict(), tmp / 'truncated.pt')
    (tmp / 'truncated.pt').write_bytes((tmp / 'truncated.pt').read_bytes()[:500])
    torch.save({'script': 'cyclegan', 'G_A': {}}, tmp / 'no_args.pt')
    sd = official_resnet_state_dict()
    del sd['model.23.weight']
    sd['model.99.weight'] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp / 'wrong_keys.pth')

CYCLEGAN, PIXELGAN = 'cyclegan.py', 'pixelgan.py'
TRANSLATE, EXPORT = 'tools/translate.py', 'tools/export.py'
EVALUATE, BENCH = 'tools/evaluate.py', 'tools/bench.py'
CATALOGUE = [  # (script, command line, what the one line says, files that must stay as they were)
    (CYCLEGAN, '--out_dir {t}/run',
     "{t}/run/ckpt.pt exists; it is not replaced (a run's: --resume it)",
     ['run/ckpt.pt']),
    (CYCLEGAN, '--ckpt {t}/pretrained.pth', 'pretrained.pth exists; it is not replaced',
     ['pretrained.pth']),
    (TRANSLATE, '{t}/photos --ckpt {t}/pretrained.pth --results_dir {t}/photos',
     'photos/a.png would be replaced; give another --results_dir', ['photos/a.png']),
    (TRANSLATE, '{t}/photos --ckpt {t}/empty.pt', 'empty.pt: not a loadable weights file', []),
    (TRANSLATE, '{t}/photos --ckpt {t}/truncated.pt', 'truncated.pt: not a loadable weights file',
     []),
    (CYCLEGAN, '--resume --ckpt {t}/no_args.pt',
     'no_args.pt: a cyclegan.py checkpoint whose args is missing', ['no_args.pt']),
    (TRANSLATE, '{t}/photos --ckpt {t}/wrong_keys.pth',
     'wrong_keys.pth: not the weights of this ResnetGenerator (missing: model.23.weight; '
     'unexpected: model.99.weight)', []),
    (PIXELGAN, '--resume --ckpt {t}/run/ckpt.pt',
     'run/ckpt.pt is not a checkpoint of cyclegan.py or pixelgan.py', ['run/ckpt.pt']),
    (CYCLEGAN, '--preprocess none --batch_size 2', "--preprocess none keeps each image's size",
     []),
    (PIXELGAN, '--preprocess scale_width', "argument --preprocess: invalid choice: 'scale_width'",
     []),
    (CYCLEGAN, '--crop_size 30', '--crop_size 30 must be a multiple of 4', []),
    (CYCLEGAN, '--crop_size 20 --load_size 20',
     "--crop_size 20 must be a multiple of 4 from 24 up", []),
    (PIXELGAN, '--netD n_layers --n_layers_D 6',
     '--crop_size 128 is too small for --n_layers_D 6; give at most 5', []),
    (EXPORT, '--ckpt {t}/pretrained.pth --out {t}/pretrained.pth/g.pt2',
     'pretrained.pth is a file, not a folder', ['pretrained.pth']),
    (CYCLEGAN, '--resume --ckpt {t}/empty.pt', 'empty.pt: not a loadable weights file',
     ['empty.pt']),
    (CYCLEGAN, '--input_nc 1', '--lambda_identity needs --input_nc = --output_nc', []),
    pytest.param(PIXELGAN, '--device cuda',
                 '--device cuda: not present here (present: cpu)', [],
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason='this machine has CUDA')),
    (PIXELGAN, '--fid_weights {t}/nothing.pt', '--fid_weights {t}/nothing.pt: no such file', []),
    (EXPORT, '--ckpt {t}/pretrained.pth --out {t}/official',
     'pretrained.pth holds a generator, not a checkpoint of cyclegan.py or pixelgan.py',
     ['pretrained.pth']),
    (EXPORT, '--ckpt {t}/run/ckpt.pt --out {t}/g.pt2', 'ckpt.pt: not a generator state_dict',
     ['run/ckpt.pt']),
    (EXPORT, '--ckpt {t}/empty.pt --out {t}/g.onnx', 'empty.pt: not a loadable weights file',
     ['empty.pt']),
    (EVALUATE, '--ckpt {t}/no_args.pt',
     'no_args.pt: a cyclegan.py checkpoint whose args is missing',
     ['no_args.pt']),
    (EVALUATE, '--real {t}/photos --fake {t}/photos --fid_weights {t}/nothing.pt',
     'nothing.pt: no such file', []),
    (EVALUATE, '', 'give --ckpt FILE, or --real DIR and --fake DIR', []),
    (BENCH, 'cyclegan --crop_size 30', '--crop_size 30 must be a multiple of 4', []),
    (BENCH, 'nothing', 'name the script first: python tools/bench.py cyclegan|pixelgan', []),
    (CYCLEGAN, '--fid_weights {t}/empty.pt', 'empty.pt: not the FID Inception weights',
     ['empty.pt']),
    (CYCLEGAN, '--dtype float16', '--dtype float16 is trained with loss scaling, on CUDA only', []),
    (EXPORT, '--ckpt {t}/pretrained.pth --out {t}/G_A.pth', "give G.safetensors, G.pt2, G.onnx, "
     "or a folder", ['pretrained.pth']),
    (EXPORT, '--ckpt {t}/pretrained.pth --out=', "--out '': give G.safetensors", []),
    (EVALUATE, '--ckpt {t}/pretrained.pth', 'pretrained.pth holds a generator, which knows no '
     'data: give --dataroot', ['pretrained.pth']),
    (EVALUATE, '--ckpt {t}/pretrained.pth --real {t}/photos --fake {t}/photos',
     'give --ckpt, or --real and --fake: not both', []),
    (TRANSLATE, '{t}/photos --ckpt {t}/pretrained.pth --direction BtoA',
     'pretrained.pth holds one generator; drop --direction', []),
]

@pytest.mark.parametrize('script, command, says, unchanged', CATALOGUE)
def test_every_mistake_is_one_line_and_loses_nothing(tmp_path, script, command, says, unchanged):
    make_catalogue_files(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in unchanged}
    argv = command.format(t=tmp_path).split()
    if '--out_dir' not in command and not script.startswith('tools/'):  # a training run: anew
        argv += ['--out_dir', tmp_path / 'new', '--num_threads', 0]
    line = one_line(run(script, *argv, check=False))
    assert line.startswith('error: ') and says.format(t=tmp_path) in line
    assert {f: (tmp_path / f).read_bytes() for f in unchanged} == before


def test_ctrl_c_while_translating_is_one_line_and_status_130(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    for i in range(20):
        save_image(str(tmp_path / 'in' / f'{i:02d}.png'), size=(256, 256), seed=i)
    results = tmp_path / 'r'
    status, out, err = interrupted('tools/translate.py', [
        tmp_path / 'in', '--ckpt', tmp_path / 'g.pth', '--results_dir', results],
        tmp_path, lambda err: results.is_dir() and any(results.glob('*.png')))
    assert status == 130
    assert only_error_line(err).startswith('interrupted')
    assert len(list(results.glob('*.png'))) < 20

def test_ctrl_c_while_evaluating_is_one_line_and_status_130(tmp_path, tiny_runs, weights):
    status, out, err = interrupted('tools/evaluate.py', [
        '--ckpt', tiny_runs[0], '--fid_weights', weights], tmp_path, lambda err: 'note:' in err)
    assert status == 130
    assert only_error_line(err).startswith('interrupted')
    assert out == ''

def test_ctrl_c_during_a_runs_start_up_is_one_line_status_130_and_no_checkpoint(
        tmp_path, weights):
    status, out, err = interrupted('cyclegan.py', [
        *TINY_CYCLEGAN, '--fid_weights', weights, '--max_iters', 1, '--out_dir', tmp_path / 'o'],
        tmp_path, lambda err: 'note:' in err)
    assert status == 130
    assert only_error_line(err).startswith('interrupted')
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()

def test_ctrl_c_while_exporting_is_one_line_status_130_and_writes_nothing(
        tmp_path, tiny_runs, monkeypatch, capsys):
    """As tools/export.py runs from a shell: its __main__ block, Ctrl-C during torch.export."""
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch.export, 'export', ctrl_c)
    monkeypatch.setattr(sys, 'path', list(sys.path))
    script = os.path.join(ROOT, 'tools', 'export.py')
    monkeypatch.setattr(sys, 'argv', [script, '--ckpt', str(tiny_runs[0]), '--out',
                                      str(tmp_path / 'G.pt2')])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name='__main__')
    assert e.value.code == 130
    assert only_error_line(capsys.readouterr().err).startswith('interrupted')
    assert os.listdir(tmp_path) == []

def test_save_file_never_follows_a_link_at_a_temporary_name(tmp_path, tiny_runs, monkeypatch):
    victim = tmp_path / 'victim'
    victim.write_bytes(b'precious')
    names = ['taken1', 'taken2', 'free']  # mkstemp's candidates, in order
    monkeypatch.setattr(tempfile, '_get_candidate_names', lambda: iter(names))
    for link in ('.ckpt.pt.taken1', '.ckpt.pt.taken2', 'ckpt.pt.tmp'):
        os.symlink(victim, tmp_path / link)
    ckpt = torch.load(tiny_runs[0], weights_only=True)
    cyclegan.save_file(functools.partial(torch.save, ckpt), str(tmp_path / 'ckpt.pt'))
    assert victim.read_bytes() == b'precious'
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == ckpt['step']
    for link in ('.ckpt.pt.taken1', '.ckpt.pt.taken2', 'ckpt.pt.tmp'):
        assert os.readlink(tmp_path / link) == str(victim)
    assert not os.path.lexists(tmp_path / '.ckpt.pt.free')

def test_save_file_refuses_a_dangling_link_at_the_destination_unless_replacing(tmp_path):
    target = tmp_path / 'link.pt'
    os.symlink(tmp_path / 'nowhere', target)
    with pytest.raises(SystemExit, match='link.pt'):
        cyclegan.save_file(b'new', str(target))
    assert os.path.islink(target)
    assert sorted(os.listdir(tmp_path)) == ['link.pt']
    cyclegan.save_file(b'new', str(target), replace=True)
    assert not os.path.islink(target) and target.read_bytes() == b'new'
    assert not (tmp_path / 'nowhere').exists()

@pytest.mark.parametrize('script', ['cyclegan.py', 'pixelgan.py'])
def test_a_ckpt_under_a_file_fails_before_training_with_one_line(tmp_path, script):
    (tmp_path / 'file').write_text('')
    ckpt = tmp_path / 'file' / 'ckpt.pt'
    p = run(script, *tiny_flags(script), '--max_iters', 2, '--out_dir', tmp_path / 'o',
            '--ckpt', ckpt, check=False)
    assert str(ckpt) in one_line(p)
    assert 'iter' not in p.stdout

@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0, reason='root writes anywhere')
def test_a_ckpt_in_a_read_only_folder_fails_before_training_with_one_line(tmp_path):
    (tmp_path / 'ro').mkdir()
    os.chmod(tmp_path / 'ro', 0o500)
    ckpt = tmp_path / 'ro' / 'ckpt.pt'
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path / 'o',
            '--ckpt', ckpt, check=False)
    os.chmod(tmp_path / 'ro', 0o700)
    assert str(ckpt) in one_line(p)
    assert 'iter' not in p.stdout

def test_a_new_run_sharing_a_finished_runs_ckpt_is_refused_and_the_ckpt_stays(
        tmp_path, tiny_runs):
    shared = tmp_path / 'shared.pt'  # a finished run's --ckpt (its --out_dir elsewhere)
    shutil.copy(tiny_runs[0], shared)
    before = shared.read_bytes()
    for script in ('cyclegan.py', 'pixelgan.py'):
        p = run(script, *tiny_flags(script), '--max_iters', 2, '--out_dir', tmp_path / script,
                '--ckpt', shared, check=False)
        assert str(shared) in one_line(p) and '--resume' in p.stderr
        assert 'iter' not in p.stdout
    assert shared.read_bytes() == before

def test_more_threads_than_cpus_train_without_the_excessive_workers_warning(
        tmp_path, monkeypatch):
    make_unpaired(tmp_path / 'data', n=2)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    with pytest.warns(UserWarning, match='excessive'):  # what 4 workers on 2 CPUs would say
        torch.utils.data.DataLoader([0], num_workers=4).check_worker_number_rationality()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--netG',
            'resnet_6blocks', '--num_threads', 4, '--max_iters', 1, '--out_dir', tmp_path / 'o')
    assert not [w for w in caught if 'excessive' in str(w.message)]


# -----------------------------------------------------------------------------
# reading rules: the scripts as code to read, one model each, what they share written out
# identically, one statement per line, a flat training loop

MODEL_SPECIFIC = ['get_parser', 'train_step', 'make_data', 'build_model', 'evaluate',
                  'save_samples', 'train', 'check_run', 'held_out_data']  # the rest: the same

def definitions(module):
    """A script's top-level functions and classes, in the order of the file."""
    tree = ast.parse(inspect.getsource(module))
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]

def test_what_both_scripts_share_is_the_same_source_in_the_same_order():
    in_both = [n for n in definitions(cyclegan) if n in definitions(pixelgan)]
    shared = [n for n in in_both if n not in MODEL_SPECIFIC]
    assert {'save_file', 'load_file', 'check_checkpoint', 'resume_args', 'setup', 'save_run',
            'restore_run', 'psnr', 'open_log', 'log', 'request_stop', 'bounded', 'parse_args',
            'discriminator_loss', 'NLayerDiscriminator', 'init_weights', 'next_batch',
            'read_losses', 'main'} <= set(shared)
    assert shared == [n for n in definitions(pixelgan) if n in shared]  # the same order in both
    for name in shared:
        ours, theirs = getattr(cyclegan, name), getattr(pixelgan, name)
        assert inspect.getsource(ours) == inspect.getsource(theirs), name
    for name in MODEL_SPECIFIC:  # the list names real differences only
        ours, theirs = getattr(cyclegan, name), getattr(pixelgan, name)
        assert inspect.getsource(ours) != inspect.getsource(theirs), name

TOOLS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'tools', '*.py')))
READ_FILES = ['cyclegan.py', 'pixelgan.py', 'data.py', *TOOLS, 'test_models.py']

@pytest.mark.parametrize('script', READ_FILES)
def test_one_statement_per_line_and_lines_of_at_most_100_characters(script):
    with open(os.path.join(ROOT, script)) as f:
        src = f.read()
    assert [i + 1 for i, line in enumerate(src.splitlines()) if len(line) > 100] == []
    tokens = tokenize.generate_tokens(io.StringIO(src).readline)
    assert [t.start[0] for t in tokens if t.type == tokenize.OP and t.string == ';'] == []
    tree = ast.parse(src)
    side_effects = [n.lineno for n in ast.walk(tree)
                    if isinstance(n, ast.Expr) and isinstance(n.value, (ast.BoolOp, ast.IfExp))]
    multi_line_choices = [n.lineno for n in ast.walk(tree)
                          if isinstance(n, ast.IfExp) and n.end_lineno > n.lineno]
    assert side_effects == [] and multi_line_choices == []

@pytest.mark.parametrize('module', [cyclegan, pixelgan])
def test_the_training_loop_is_flat(module):
    """train() defines no inner functions, and its loop (the one that calls train_step) is a flat
    sequence of phases: at most 70 lines, blocks at most four deep."""
    fn = ast.parse(inspect.getsource(module.train)).body[0]
    functions = [n for n in ast.walk(fn) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
    assert functions == [fn]
    def calls_train_step(node):
        return any(isinstance(c, ast.Call) and getattr(c.func, 'id', '') == 'train_step'
                   for c in ast.walk(node))
    loops = [n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While)) and calls_train_step(n)]
    assert len(loops) == 1 and loops[0].end_lineno - loops[0].lineno + 1 <= 70
    def depth(node):
        blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try)
        inner = [depth(c) for c in ast.iter_child_nodes(node)]
        return max(inner, default=0) + isinstance(node, blocks)
    assert depth(fn) <= 4

"""The specification of cyclegan.py, pixelgan.py and data.py, as tests. Small sizes and widths keep
the whole file to a few minutes on two CPU cores."""
import ast, contextlib, copy, errno, functools, gc, importlib.util, inspect, io, json, os, pickle, subprocess, sys, tokenize, zipfile
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cyclegan, data, pixelgan
from tools import bench, download as download_tool, evaluate as evaluate_tool, export as export_tool, fid
from tools import to_tensorboard, translate as translate_tool

ROOT = os.path.dirname(os.path.abspath(__file__))
count = lambda net: sum(p.numel() for p in net.parameters())

def run(script, *args, check=True, fresh=False, **kw):
    """Run a script the way a user does; returns its exit status, stdout, stderr, and both in .out.
    Its main() runs inside this process, as Python would run it, which saves starting Python and
    torch for each call; in a new process with fresh=True or subprocess.run's options (env, cwd)."""
    argv = [str(a) for a in args]
    if fresh or kw:
        p = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True, **kw)
    else:
        p = run_main(script, argv)
    p.out = p.stdout + p.stderr
    if check:
        assert p.returncode == 0, p.out
    return p

def run_main(script, argv):
    """script's main(argv) in this process: what sys.exit says goes to stderr, with its status; an
    exception is a traceback and status 1; the signal handlers that main() installs are undone."""
    import signal, traceback, types
    modules = {'cyclegan.py': cyclegan, 'pixelgan.py': pixelgan, 'tools/bench.py': bench, 'tools/download.py': download_tool,
               'tools/evaluate.py': evaluate_tool, 'tools/export.py': export_tool, 'tools/translate.py': translate_tool,
               'tools/to_tensorboard.py': to_tensorboard}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    stdout, stderr, status = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            modules[script].main(argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            stderr.write(e.code + '\n')
    except Exception:
        stderr.write(traceback.format_exc())
        status = 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        gc.collect()  # closes what the run left open, as its process's end would (its out_dir's lock)
    return types.SimpleNamespace(returncode=status, stdout=stdout.getvalue(), stderr=stderr.getvalue())

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

# -----------------------------------------------------------------------------
# networks: the official layouts, parameter counts and state_dict keys (REFERENCE.md)

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

@pytest.mark.parametrize('n_layers, params', [(1, 139_585), (2, 666_433), (4, 6_964_033), (5, 11_159_361)])
def test_n_layer_discriminator_counts(n_layers, params):
    assert count(pixelgan.NLayerDiscriminator(6, n_layers=n_layers, norm='batch')) == params

def test_official_key_names():
    G = cyclegan.ResnetGenerator(norm='instance')
    assert {'model.1.weight', 'model.10.conv_block.1.weight', 'model.10.conv_block.5.weight', 'model.19.weight',
            'model.22.weight', 'model.26.bias'} <= set(G.state_dict())
    U = pixelgan.UnetGenerator(num_downs=8, ngf=4)
    assert {'model.model.0.weight', 'model.model.1.model.1.weight', 'model.model.3.bias'} <= set(U.state_dict())
    assert {'model.0.weight', 'model.2.weight', 'model.3.weight', 'model.11.weight'} <= set(pixelgan.NLayerDiscriminator(ndf=4, norm='batch').state_dict())

@pytest.mark.parametrize('netD, n_layers, side', [('basic', 3, 30), ('n_layers', 1, 126), ('n_layers', 2, 62),
                                                  ('n_layers', 4, 14), ('n_layers', 5, 6), ('pixel', 3, 256)])
def test_discriminator_output_shapes_on_256(netD, n_layers, side):
    args, _ = pixelgan.parse_args(['--dataroot', 'x', '--netD', netD, '--n_layers_D', str(n_layers), '--ndf', '4', '--ngf', '4'])
    D = pixelgan.build_model(args, torch.device('cpu'))[0]['D']
    assert D(torch.zeros(1, 6, 256, 256)).shape == (1, 1, side, side)

@pytest.mark.parametrize('netD, n_layers, field', [('pixel', 3, 1), ('n_layers', 1, 16), ('basic', 3, 70)])
def test_discriminator_receptive_fields_measured_by_gradient(netD, n_layers, field):
    args, _ = pixelgan.parse_args(['--dataroot', 'x', '--netD', netD, '--n_layers_D', str(n_layers), '--ndf', '4', '--ngf', '4', '--norm', 'none'])
    D = pixelgan.build_model(args, torch.device('cpu'))[0]['D']
    x = torch.randn(1, 6, 160, 160, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum((0, 1)), as_tuple=True)
    assert rows.max() - rows.min() + 1 == field and cols.max() - cols.min() + 1 == field

def test_generators_keep_the_input_size():
    assert cyclegan.ResnetGenerator(ngf=4, n_blocks=6)(torch.zeros(1, 3, 36, 52)).shape == (1, 3, 36, 52)
    assert pixelgan.UnetGenerator(num_downs=7, ngf=4)(torch.zeros(2, 3, 128, 256)).shape == (2, 3, 128, 256)
    with pytest.raises(RuntimeError):  # 7 downsamplings of 64 pixels: the bottleneck has no pixels left
        pixelgan.UnetGenerator(num_downs=7, ngf=4)(torch.zeros(2, 3, 64, 64))

def test_init_is_normal_0_02():
    torch.manual_seed(0)
    args, _ = cyclegan.parse_args(['--dataroot', 'x', '--norm', 'batch'])
    G = cyclegan.build_model(args, torch.device('cpu'))[0]['G_A']
    w = G.model[4].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert abs(G.model[5].weight.mean().item() - 1) < 0.01 and G.model[5].bias.abs().sum() == 0

def test_one_batched_call_equals_separate_calls_with_instance_norm():
    torch.manual_seed(0)
    G_A, G_B = cyclegan.ResnetGenerator(ngf=4, n_blocks=2), cyclegan.ResnetGenerator(ngf=4, n_blocks=2)
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    for there, back in ((G_A, G_B), (G_B, G_A)):
        batched = cyclegan.run_cycle(there, back, A, B, batch_calls=True)
        separate = cyclegan.run_cycle(there, back, A, B, batch_calls=False)
        for x, y in zip(batched, separate):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    D = cyclegan.NLayerDiscriminator(ndf=4)
    torch.testing.assert_close(cyclegan.discriminator_loss(D, A, B, 'lsgan', True),
                               cyclegan.discriminator_loss(D, A, B, 'lsgan', False))

def test_generator_step_follows_the_full_objective_in_one_piece():
    """train_step runs a backward per cycle; the generators' gradients are those of the paper's Eq. 3."""
    torch.manual_seed(0)
    args, _ = cyclegan.parse_args(['--dataroot', 'x', '--ngf', '4', '--ndf', '4', '--pool_size', '0'])
    nets = list(cyclegan.build_model(args, torch.device('cpu'))[0].values())  # G_A, G_B, D_A, D_B
    G_A, G_B, D_A, D_B = copy.deepcopy(nets)  # the reference, before the step changes the weights
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    fake_B, fake_A = G_A(A), G_B(B)
    objective = (F.mse_loss(D_A(fake_B), torch.ones_like(D_A(fake_B))) + F.mse_loss(D_B(fake_A), torch.ones_like(D_B(fake_A)))
                 + 10 * F.l1_loss(G_B(fake_B), A) + 10 * F.l1_loss(G_A(fake_A), B)  # lambda_A = lambda_B = 10
                 + 0.5 * 10 * F.l1_loss(G_A(B), B) + 0.5 * 10 * F.l1_loss(G_B(A), A))  # lambda_identity 0.5
    objective.backward()
    opt_G = torch.optim.Adam([*nets[0].parameters(), *nets[1].parameters()])
    opt_D = torch.optim.Adam([*nets[2].parameters(), *nets[3].parameters()])
    pool = cyclegan.ImagePool(0)
    losses = cyclegan.train_step(dict(zip(cyclegan.NETWORKS, nets)), opt_G, opt_D, pool, pool, A, B, args,
                                 contextlib.nullcontext(), torch.amp.GradScaler('cpu', enabled=False))
    assert sum(losses[k] for k in ('G_A', 'G_B', 'cycle_A', 'cycle_B', 'idt_A', 'idt_B')).item() == pytest.approx(objective.item())
    for ours, ref in zip([*nets[0].parameters(), *nets[1].parameters()], [*G_A.parameters(), *G_B.parameters()]):
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-3, atol=1e-5)

# -----------------------------------------------------------------------------
# losses, pool, schedule

def test_gan_losses():
    pred = torch.tensor([[0.0, 2.0]])
    assert cyclegan.gan_loss(pred, True, 'lsgan').item() == pytest.approx((1 + 1) / 2)
    assert cyclegan.gan_loss(pred, False, 'lsgan').item() == pytest.approx((0 + 4) / 2)
    assert cyclegan.gan_loss(pred, True, 'vanilla').item() == pytest.approx(F.softplus(-pred).mean().item())

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
    f = lambda e: cyclegan.lr_factor(e, 100, 100)
    assert f(0) == f(98) == 1.0
    assert f(99) == 1.0  # the last constant epoch
    assert f(100) == pytest.approx(1 - 1 / 101)
    assert f(199) == pytest.approx(1 / 101)
    assert [pixelgan.lr_factor(e, 1, 2) for e in range(3)] == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]

# -----------------------------------------------------------------------------
# data

def test_every_supported_format_loads_as_rgb(tmp_path):
    kinds = {'a.jpg': 'RGB', 'b.JPEG': 'L', 'c.png': 'RGBA', 'd.PNG': 'P', 'e.ppm': 'RGB', 'f.bmp': 'RGB',
             'g.tif': 'CMYK', 'h.tiff': 'RGB', 'sub/i.png': 'I;16', 'j.png': 'LA'}
    for i, (name, mode) in enumerate(kinds.items()):
        save_image(str(tmp_path / 'trainA' / name), mode=mode, seed=i)
    (tmp_path / 'trainA' / 'notes.txt').write_text('not an image')
    save_image(str(tmp_path / 'trainB' / 'x.png'))
    ds = data.UnpairedFolders(str(tmp_path), 'train', data.Transform('resize_and_crop', 36, 32), seed=0)
    assert len(ds.A) == len(kinds) and len(ds) == len(kinds)  # recursive, any case, text file ignored
    for i in range(len(ds)):
        item = ds[i]
        assert item['A'].shape == item['B'].shape == (3, 32, 32)
        assert -1 <= item['A'].min() and item['A'].max() <= 1
    big = data.load_image(str(tmp_path / 'trainA' / 'sub' / 'i.png'))
    assert big.mode == 'RGB' and np.asarray(big).max() > 200  # 16-bit rescaled, not clipped to white

def test_unpaired_epoch_is_max_of_domains_with_b_random_or_serial(tmp_path):
    for i in range(5):
        save_image(str(tmp_path / 'trainA' / f'{i}.png'), seed=i)
    for i in range(2):
        save_image(str(tmp_path / 'trainB' / f'{i}.png'), seed=10 + i)
    tf = data.Transform('none', train=False)
    ds = data.UnpairedFolders(str(tmp_path), 'train', tf, serial=True)
    assert len(ds) == 5
    assert torch.equal(ds[3]['B'], ds[1]['B'])  # in order, wrapping around
    ds = data.UnpairedFolders(str(tmp_path), 'train', tf, serial=False, seed=1)
    assert torch.equal(ds[4]['B'], ds[4]['B'])  # random, but the same for the same (seed, epoch, index)
    picks = set()
    for epoch in range(8):
        ds.epoch = epoch
        picks.add(ds[4]['B'].sum().item())
    assert len(picks) == 2  # drawn anew each epoch

@pytest.mark.parametrize('case', ['missing', 'empty', 'zero_bytes', 'truncated', 'not_an_image'])
def test_broken_data_is_one_clear_error_naming_the_path(tmp_path, case):
    save_image(str(tmp_path / 'trainB' / 'ok.png'))
    (tmp_path / 'trainA').mkdir()
    bad = tmp_path / 'trainA' / 'bad.jpg'
    if case == 'zero_bytes':
        bad.write_bytes(b'')
    elif case == 'truncated':
        save_image(str(bad), size=(64, 64)); bad.write_bytes(bad.read_bytes()[:300])
    elif case == 'not_an_image':
        bad.write_text('hello')
    elif case == 'missing':
        (tmp_path / 'trainA').rmdir()
    tf = data.Transform('resize_and_crop', 36, 32)
    with pytest.raises(data.DataError) as e:
        data.UnpairedFolders(str(tmp_path), 'train', tf)[0]
    assert str(tmp_path / 'trainA') in str(e.value) and '\n' not in str(e.value)

def test_crop_larger_than_image_is_an_error_at_startup(tmp_path):
    save_image(str(tmp_path / 'trainA' / 'small.png'), size=(20, 20))
    save_image(str(tmp_path / 'trainB' / 'ok.png'), size=(64, 64))
    with pytest.raises(data.DataError, match='small.png.*smaller than --crop_size 32'):
        data.UnpairedFolders(str(tmp_path), 'train', data.Transform('crop', crop_size=32))
    with pytest.raises(data.DataError, match='--crop_size 64 is larger than --load_size 32'):
        data.Transform('resize_and_crop', 32, 64)
    assert data.UnpairedFolders(str(tmp_path), 'train', data.Transform('resize_and_crop', 36, 32))[0]['A'].shape == (3, 32, 32)

def test_paired_side_by_side_gets_identical_crops_and_flips(tmp_path):
    half = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for i in range(3):
        os.makedirs(tmp_path / 'train', exist_ok=True)
        Image.fromarray(np.concatenate([half, half, half[:, :1]], 1)).save(tmp_path / 'train' / f'{i}.png')  # odd width
    ds = data.PairedFolders(str(tmp_path), 'train', data.Transform('resize_and_crop', 40, 24), seed=0)
    crops = set()
    for epoch in range(4):
        ds.epoch = epoch
        for i in range(3):
            item = ds[i]
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

def test_sampler_shards_reshuffles_and_resumes():
    shards = [list(data.EpochSampler(10, seed=0, rank=r, world=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    s = data.EpochSampler(10, seed=0)
    epoch0 = list(s); s.epoch = 1
    assert sorted(list(s)) == list(range(10)) and list(s) != epoch0
    full = list(s)
    s.start = 4
    assert list(s) == full[4:] and len(s) == 6

def test_synthetic_datasets_are_deterministic_with_hidden_truth():
    test = data.Synthetic(32, paired=False, train=False)
    a, b = test[3]['A'], test[3]['B']
    assert torch.equal(a, data.Synthetic(32, paired=False, train=False)[3]['A'])
    assert not torch.equal(a, b) and (a - b).abs().max() > 0.5  # stripes, not a colour shift of the whole image
    same = (a == b).all(0)
    assert 0.2 < same.float().mean() < 0.95  # the background is shared, the objects differ
    paired = data.Synthetic(32, paired=True, train=False)[0]
    assert paired['A'].shape == paired['B'].shape == (3, 32, 32)
    assert cyclegan.psnr(paired['A'][None], paired['B'][None]).item() < 25

# -----------------------------------------------------------------------------
# the command line, end to end (tiny widths and images)

TINY_CYCLEGAN = ['--crop_size', 32, '--load_size', 32, '--ngf', 4, '--ndf', 4, '--num_threads', 0, '--print_freq', 2,
                 '--display_freq', 2, '--eval_freq', 4, '--save_latest_freq', 2]

def test_cyclegan_trains_resumes_and_translates(tmp_path):
    out = tmp_path / 'out'
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 4, '--out_dir', out)
    assert f"parameters: G_A {count(cyclegan.ResnetGenerator(ngf=4, n_blocks=6))}, G_B" in p.out
    assert 'built-in synthetic task' in p.out and 'psnr_AtoB' in p.out and 'psnr_BtoA' in p.out
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert log[0]['step'] == 0 and log[0]['args']['ngf'] == 4  # the run's flags open its log
    assert {'step', 'lr', 'images_per_s', 'G_A', 'cycle_A', 'idt_B', 'D_A'} <= set(log[1]) and log[1]['step'] == 2
    assert any('psnr_BtoA' in r for r in log)
    assert (out / 'samples_0000004.png').exists() and not (out / 'ckpt.pt.tmp').exists()
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 4 and {'G_A', 'G_B', 'D_A', 'D_B', 'opt_G', 'opt_D', 'pool_A', 'pool_B', 'rng_cpu', 'args'} <= set(ckpt)

    p = run('cyclegan.py', '--resume', '--out_dir', out, '--max_iters', 6)
    assert 'from iteration 4' in p.out
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 6

    photos = tmp_path / 'photos'
    save_image(str(photos / 'a.jpg'), size=(37, 23))
    save_image(str(photos / 'nested' / 'b.png'), size=(50, 41), mode='L')
    for direction in ('AtoB', 'BtoA'):
        res = tmp_path / f'res_{direction}'
        run('tools/translate.py', photos, '--ckpt', out / 'ckpt.pt', '--results_dir', res, '--direction', direction)
        assert Image.open(res / 'a.png').size == (37, 23) and Image.open(res / 'nested' / 'b.png').size == (50, 41)
    a, b = np.asarray(Image.open(tmp_path / 'res_AtoB' / 'a.png')), np.asarray(Image.open(tmp_path / 'res_BtoA' / 'a.png'))
    assert not np.array_equal(a, b)  # BtoA really uses the other generator

def test_tensorboard_gets_the_scalars_of_log_jsonl(tmp_path):
    pytest.importorskip('tensorboard', reason='optional extra: pip install tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 4, '--out_dir', tmp_path)
    run('tools/to_tensorboard.py', tmp_path)
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    assert {'G_A', 'cycle_A', 'lr', 'psnr_AtoB'} <= set(events.Tags()['scalars'])

def make_unpaired(root, n=3, size=40):
    for d in ('trainA', 'trainB', 'testA', 'testB'):
        for i in range(n):
            save_image(str(root / d / f'{i}.png'), size=(size, size), seed=hash(d) % 1000 + i)

@pytest.mark.parametrize('workers', [0, 1])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, workers):
    make_unpaired(tmp_path / 'data')  # 3 images: 6 iterations cross epochs and the lr decay
    common = ['--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--num_threads', workers, '--pool_size', 2,
              '--n_epochs', 1, '--n_epochs_decay', 2, '--load_size', 36]
    run('cyclegan.py', *common, '--max_iters', 6, '--out_dir', tmp_path / 'straight')
    run('cyclegan.py', *common, '--max_iters', 3, '--out_dir', tmp_path / 'resumed')
    run('cyclegan.py', '--resume', '--max_iters', 6, '--out_dir', tmp_path / 'resumed')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('straight', 'resumed'))
    lrs = [r['lr'] for r in map(json.loads, (tmp_path / 'straight' / 'log.jsonl').read_text().splitlines()) if 'lr' in r]
    assert lrs == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 * 2 / 3])  # steps 2, 4, 6: the decay starts with epoch 2
    assert a['step'] == b['step'] == 6  # the end of the 2nd epoch
    for k in ('G_A', 'G_B', 'D_A', 'D_B'):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), (k, name)
    assert all(torch.equal(x, y) for x, y in zip(a['pool_A'], b['pool_A']))

def test_resume_refuses_another_architecture_or_script(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--batch_size', 1, '--max_iters', 1, '--out_dir', tmp_path)
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path, '--ngf', 8, '--norm', 'batch', '--batch_size', 2, check=False)
    assert p.returncode == 1 and '--ngf 8 (checkpoint: 4)' in p.out and '--norm batch (checkpoint: instance)' in p.out
    assert '--batch_size 2 (checkpoint: 1)' in p.out  # the position in the epoch counts in batches
    assert 'Traceback' not in p.out
    with pytest.raises(SystemExit, match='is a cyclegan.py checkpoint; use cyclegan.py'):
        pixelgan.resume_args(pixelgan.parse_args(['--resume'])[1], str(tmp_path / 'ckpt.pt'))
    with pytest.raises(SystemExit, match='no such checkpoint'):
        cyclegan.resume_args(cyclegan.parse_args(['--resume'])[1], str(tmp_path / 'nothing.pt'))

def test_bad_dataroot_stops_before_training_with_one_line(tmp_path):
    make_unpaired(tmp_path)
    (tmp_path / 'trainB' / '1.png').write_bytes(b'\x89PNG broken')
    p = run('cyclegan.py', '--dataroot', tmp_path, *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'o', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.out
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'trainB' / '1.png'}: cannot read image")
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()

def test_official_generator_files_load_with_module_prefix_and_legacy_instance_norm_keys(tmp_path):
    torch.manual_seed(0)
    G = cyclegan.ResnetGenerator(ngf=8, n_blocks=9)
    sd = {'module.' + k: v for k, v in G.state_dict().items()}
    sd['module.model.2.running_mean'] = torch.zeros(8)  # what old official files carry under InstanceNorm
    sd['module.model.10.conv_block.2.num_batches_tracked'] = torch.tensor(0)
    torch.save(sd, tmp_path / 'official.pth')
    loaded = translate_tool.load_generator(str(tmp_path / 'official.pth'))[0]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), G(x))
    U = pixelgan.UnetGenerator(num_downs=7, ngf=4, norm='batch').eval()
    torch.save({'module.' + k: v for k, v in U.state_dict().items()}, tmp_path / 'unet.pth')
    loaded, multiple = translate_tool.load_generator(str(tmp_path / 'unet.pth'))
    assert multiple == 128
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(loaded.eval()(x), U(x))

def test_translate_direction_follows_the_direction_trained(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path, '--direction', 'BtoA')
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    for direction, key in (('BtoA', 'G_A'), ('AtoB', 'G_B')):  # trained BtoA: G_A maps the dataset's B to A
        G = translate_tool.load_generator(str(tmp_path / 'ckpt.pt'), direction)[0]
        assert all(torch.equal(v, ckpt[key][k]) for k, v in G.state_dict().items())

def test_resnet_generator_files_load_with_any_norm_and_dropout(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    for norm in ('instance', 'batch'):
        for dropout in (False, True):  # with dropout (pix2pix's option) the second conv of each block moves to index 6
            G = cyclegan.ResnetGenerator(ngf=4, n_blocks=6, norm=norm, dropout=dropout).eval()
            torch.save(G.state_dict(), tmp_path / 'g.pth')
            loaded, multiple = translate_tool.load_generator(str(tmp_path / 'g.pth'))
            assert multiple == 4 and torch.equal(loaded.eval()(x), G(x)), (norm, dropout)

def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / 'evil.pt', 'wb') as f:
        pickle.dump({'G_A': Evil()}, f, protocol=2)
    with pytest.raises(SystemExit, match='would run code'):
        translate_tool.load_generator(str(tmp_path / 'evil.pt'))
    p = run('cyclegan.py', '--resume', '--ckpt', tmp_path / 'evil.pt', check=False)
    assert p.returncode == 1 and 'would run code' in p.out and 'Traceback' not in p.out
    assert not marker.exists()

# -----------------------------------------------------------------------------
# pixelgan.py

TINY_PIXELGAN = ['--netG', 'unet_128', '--crop_size', 128, '--load_size', 128, '--ngf', 4, '--ndf', 4, '--num_threads', 0,
                 '--print_freq', 2, '--display_freq', 2, '--eval_freq', 4, '--save_latest_freq', 2]

def test_pixelgan_trains_resumes_translates_and_evaluates(tmp_path):
    out = tmp_path / 'out'
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 4, '--out_dir', out, '--netD', 'pixel')
    assert (f"parameters: G {count(pixelgan.UnetGenerator(num_downs=7, ngf=4))}, "
            f"D {count(pixelgan.PixelDiscriminator(6, ndf=4, norm='batch'))}") in p.out
    assert 'psnr_input' in p.out and (out / 'samples_0000004.png').exists()
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert {'G_GAN', 'G_L1', 'D', 'lr'} <= set(log[1]) and any('psnr' in r for r in log)
    p = run('pixelgan.py', '--resume', '--out_dir', out, '--max_iters', 6)
    assert 'from iteration 4' in p.out and torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 6

    save_image(str(tmp_path / 'in' / 'odd.png'), size=(100, 70))
    run('tools/translate.py', tmp_path / 'in' / 'odd.png', '--ckpt', out / 'ckpt.pt', '--results_dir', tmp_path / 'res')
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
    p = run('pixelgan.py', '--dataroot', tmp_path, *TINY_PIXELGAN, '--max_iters', 2, '--out_dir', tmp_path / 'o',
            '--direction', 'BtoA', '--netD', 'n_layers', '--n_layers_D', 1, '--load_size', 140)
    assert 'eval at iter 2' in p.out and 'psnr' in p.out

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
    assert torch.equal(G.model.model[1].model[2].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)

def test_translate_explains_files_it_cannot_use(tmp_path):
    torch.save(cyclegan.NLayerDiscriminator(ndf=4).state_dict(), tmp_path / 'd.pth')
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'random.pth')
    for f, says in (('d.pth', 'a discriminator'), ('random.pth', 'not a generator state_dict')):
        with pytest.raises(SystemExit, match=says):
            translate_tool.load_generator(str(tmp_path / f))
    save_image(str(tmp_path / 'img' / 'a.png'))
    p = run('tools/translate.py', tmp_path / 'img', '--ckpt', tmp_path / 'd.pth', check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {tmp_path / 'd.pth'}: a discriminator; give a generator (ResNet or U-Net)"

# -----------------------------------------------------------------------------
# the same outputs as the official networks, from state_dicts built to the official key layout

def official_resnet_state_dict(ngf=4, n_blocks=6, gen=None):
    """Keys and shapes as REFERENCE.md describes the official ResNet generator (instance norm)."""
    r = lambda *shape: torch.randn(*shape, generator=gen) * 0.1
    sd = {'model.1.weight': r(ngf, 3, 7, 7), 'model.1.bias': r(ngf),
          'model.4.weight': r(2 * ngf, ngf, 3, 3), 'model.4.bias': r(2 * ngf),
          'model.7.weight': r(4 * ngf, 2 * ngf, 3, 3), 'model.7.bias': r(4 * ngf)}
    for b in range(10, 10 + n_blocks):
        for i in (1, 5):
            sd[f'model.{b}.conv_block.{i}.weight'], sd[f'model.{b}.conv_block.{i}.bias'] = r(4 * ngf, 4 * ngf, 3, 3), r(4 * ngf)
    u = 10 + n_blocks
    sd.update({f'model.{u}.weight': r(4 * ngf, 2 * ngf, 3, 3), f'model.{u}.bias': r(2 * ngf),
               f'model.{u + 3}.weight': r(2 * ngf, ngf, 3, 3), f'model.{u + 3}.bias': r(ngf),
               f'model.{u + 7}.weight': r(3, ngf, 7, 7), f'model.{u + 7}.bias': r(3)})
    return sd

def official_resnet_forward(sd, x, n_blocks):
    """The official ResNet generator written out as plain functions, layer by layer."""
    pad = lambda x, p: F.pad(x, (p,) * 4, mode='reflect')
    conv = lambda x, k, **kw: F.conv2d(x, sd[k + '.weight'], sd[k + '.bias'], **kw)
    up = lambda x, k: F.conv_transpose2d(x, sd[k + '.weight'], sd[k + '.bias'], stride=2, padding=1, output_padding=1)
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
    """Keys and shapes of the official U-Net with batch norm (REFERENCE.md), random running stats."""
    r = lambda *shape: torch.randn(*shape, generator=gen) * 0.1
    bn = lambda k, c: {f'{k}.weight': 1 + r(c), f'{k}.bias': r(c), f'{k}.running_mean': r(c),
                       f'{k}.running_var': 1 + r(c).abs(), f'{k}.num_batches_tracked': torch.tensor(1)}
    widths = [ngf * min(2 ** i, 8) for i in range(num_downs)]  # 64, 128, 256, 512, 512, ...
    sd = {'model.model.0.weight': r(widths[0], 3, 4, 4), 'model.model.3.weight': r(2 * widths[0], 3, 4, 4), 'model.model.3.bias': r(3)}
    p = 'model.model.1.model.'
    for level in range(1, num_downs):
        outer, inner = widths[level - 1], widths[level]
        sd[p + '1.weight'] = r(inner, outer, 4, 4)
        if level == num_downs - 1:  # innermost
            sd[p + '3.weight'] = r(inner, outer, 4, 4); sd.update(bn(p + '4', outer))
        else:
            sd.update(bn(p + '2', inner)); sd[p + '5.weight'] = r(2 * inner, outer, 4, 4); sd.update(bn(p + '6', outer))
            p += '3.model.'
    return sd

def official_unet_forward(sd, x, num_downs):
    """The official U-Net in eval mode as plain functions. Its in-place LeakyReLU makes each skip
    connection carry LeakyReLU(x), not x."""
    bn = lambda x, k: F.batch_norm(x, sd[k + '.running_mean'], sd[k + '.running_var'], sd[k + '.weight'], sd[k + '.bias'])
    down = lambda x, k: F.conv2d(F.leaky_relu(x, 0.2), sd[k + '.weight'], stride=2, padding=1)
    up = lambda x, k: F.conv_transpose2d(F.relu(x), sd[k + '.weight'], stride=2, padding=1)
    def level(x, p, depth):
        if depth == num_downs - 1:
            y = bn(up(down(x, p + '1'), p + '3'), p + '4')
        else:
            y = bn(up(level(bn(down(x, p + '1'), p + '2'), p + '3.model.', depth + 1), p + '5'), p + '6')
        return torch.cat([F.leaky_relu(x, 0.2), y], 1)
    y = level(F.conv2d(x, sd['model.model.0.weight'], stride=2, padding=1), 'model.model.1.model.', 1)
    return torch.tanh(F.conv_transpose2d(F.relu(y), sd['model.model.3.weight'], sd['model.model.3.bias'], stride=2, padding=1))

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
        torch.testing.assert_close(G.eval()(x), official_unet_forward(sd, x, 7), rtol=1e-4, atol=1e-5)

# -----------------------------------------------------------------------------
# data parallelism: two CPU processes with gloo, as torch.multiprocessing / torchrun launch them

def _ddp_worker(rank, script, argv, port, out):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    module = {'cyclegan': cyclegan, 'pixelgan': pixelgan}[script]
    nets = module.train(*module.parse_args(argv))
    torch.save([n.state_dict() for n in nets.values()], os.path.join(out, f'rank{rank}.pt'))

@pytest.mark.parametrize('script, tiny', [('cyclegan', TINY_CYCLEGAN), ('pixelgan', TINY_PIXELGAN)])
def test_two_processes_train_in_lockstep_and_reproducibly(tmp_path, script, tiny):
    import torch.multiprocessing as mp
    finals = []
    for trial in range(2):  # (a thread per process: two processes of two threads on two cores crawl)
        out = tmp_path / f'run{trial}'
        out.mkdir()
        argv = [str(v) for v in tiny] + ['--max_iters', '3', '--out_dir', str(out / 'train'), '--eval_freq', '100']
        mp.spawn(_ddp_worker, args=(script, argv, 29500 + os.getpid() % 1000 + trial, str(out)), nprocs=2)
        r0, r1 = (torch.load(out / f'rank{r}.pt', weights_only=True) for r in (0, 1))
        for a, b in zip(r0, r1):  # every optimizer step used both ranks' gradients (batch norm running
            assert all(torch.equal(a[k], b[k]) for k in a if 'running_' not in k)  # statistics stay per rank)
        assert sorted(os.listdir(out / 'train')) == ['ckpt.pt', 'log.jsonl'] + [f'samples_{i:07d}.png' for i in (2, 3)]
        finals.append(r0)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(*finals) for k in a)

def test_torchrun_launch(tmp_path):
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN), '--max_iters', '2', '--out_dir', str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('parameters: G_A') == 1  # rank 0 alone prints
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2

def test_torchrun_a_file_broken_on_one_process_ends_every_process(tmp_path):
    make_unpaired(tmp_path / 'data', n=4)
    bad = tmp_path / 'data' / 'trainA' / '3.png'
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])  # found only when loaded
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'cyclegan.py'), '--dataroot', str(tmp_path / 'data'), *map(str, TINY_CYCLEGAN),
                        '--load_size', '36', '--max_iters', '8', '--out_dir', str(tmp_path / 'o')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and f"error: {bad}: cannot read image" in p.stderr
    if (tmp_path / 'o' / 'ckpt.pt').exists():  # the last checkpoint saved, whole
        assert torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] in (2, 4, 6)

# -----------------------------------------------------------------------------
# dataset and model download, from a local HTTP server standing in for the official host

@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; under /short/ it announces more bytes than it sends."""
    import http.server, threading
    www = tmp_path / 'www'
    www.mkdir()
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)
        def log_message(self, *a):
            pass
        def do_GET(self):
            if self.path.startswith('/short/'):
                self.send_response(200); self.send_header('Content-Length', '100000'); self.end_headers()
                self.wfile.write(b'PK' + b'\0' * 1000)
            else:
                super().do_GET()
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f'http://127.0.0.1:{httpd.server_port}'
    httpd.shutdown()

def download(monkeypatch, url, *argv):
    monkeypatch.setenv('GAN_DOWNLOAD_URL', url)
    download_tool.main([str(a) for a in argv])

def test_download_unpacks_zip_and_tar_into_the_layout_the_scripts_read(server, tmp_path, monkeypatch, capsys):
    import tarfile, zipfile
    www, url = server
    (www / 'cyclegan' / 'datasets').mkdir(parents=True)
    with zipfile.ZipFile(www / 'cyclegan' / 'datasets' / 'horse2zebra.zip', 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a'); z.writestr('horse2zebra/testB/2.jpg', b'b')
    (www / 'pix2pix' / 'datasets').mkdir(parents=True)
    src = tmp_path / 'src' / 'facades' / 'train'
    src.mkdir(parents=True); (src / '1.jpg').write_bytes(b'ab')
    with tarfile.open(www / 'pix2pix' / 'datasets' / 'facades.tar.gz', 'w:gz') as t:
        t.add(tmp_path / 'src' / 'facades', arcname='facades')
    root = tmp_path / 'datasets'
    download(monkeypatch, url, 'dataset', 'horse2zebra', '--root', root)
    assert (root / 'horse2zebra' / 'trainA' / '1.jpg').read_bytes() == b'a'
    assert 'MiB/s' in capsys.readouterr().err  # the progress display
    download(monkeypatch, url, 'dataset', 'facades', '--root', root)
    assert (root / 'facades' / 'train' / '1.jpg').read_bytes() == b'ab'
    assert sorted(os.listdir(root)) == ['facades', 'horse2zebra']  # no temporary leftovers
    download(monkeypatch, url, 'dataset', '--list')
    assert {'horse2zebra', 'facades', 'cyclegan_facades', 'edges2shoes', 'mini_pix2pix', 'ae_photos'} <= set(capsys.readouterr().out.split())

def test_download_model_saves_the_official_generator_file(server, tmp_path, monkeypatch, capsys):
    www, url = server
    (www / 'cyclegan' / 'pretrained_models').mkdir(parents=True)
    torch.save(official_resnet_state_dict(), www / 'cyclegan' / 'pretrained_models' / 'horse2zebra.pth')
    download(monkeypatch, url, 'model', 'horse2zebra', '--root', tmp_path / 'pretrained')
    G = translate_tool.load_generator(str(tmp_path / 'pretrained' / 'horse2zebra.pth'))[0]
    assert sum(p.numel() for p in G.parameters()) == sum(v.numel() for v in official_resnet_state_dict().values())
    download(monkeypatch, url, 'model', '--list')
    assert {'horse2zebra', 'style_monet', 'facades_label2photo', 'cyclegan_facades_label2photo', 'edges2shoes',
            'day2night'} <= set(capsys.readouterr().out.split())

@pytest.mark.parametrize('case, says', [('404', 'download failed'), ('short', 'cut short'), ('offline', 'download failed')])
def test_failed_downloads_leave_nothing_that_looks_finished(server, tmp_path, monkeypatch, case, says):
    _, url = server  # nothing is served: every file is a 404
    url = {'404': url, 'short': url + '/short', 'offline': 'http://127.0.0.1:9'}[case]
    with pytest.raises(download_tool.DownloadError, match=says) as e:
        download(monkeypatch, url, 'dataset', 'horse2zebra', '--root', tmp_path / 'datasets')
    assert url in str(e.value) and (case == 'short' or 'unpack FILE' in str(e.value))
    assert os.listdir(tmp_path / 'datasets') == []  # no partial archive, no half-unpacked folder

def test_download_errors_are_one_line_for_the_user(tmp_path):
    p = run('tools/download.py', 'dataset', 'horse2zebra', cwd=tmp_path, env={**os.environ, 'GAN_DOWNLOAD_URL': 'http://127.0.0.1:9'}, check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith('error: http://127.0.0.1:9/cyclegan/datasets/horse2zebra.zip: download failed')
    assert len(p.stderr.strip().splitlines()) == 1

def test_hostile_archives_are_refused_and_write_nothing_outside(tmp_path):
    import io, tarfile, zipfile
    slip = tmp_path / 'slip.zip'
    with zipfile.ZipFile(slip, 'w') as z:
        z.writestr('data/trainA/1.jpg', b'a'); z.writestr('../../evil.txt', b'x')
    link = tmp_path / 'link.tar'
    with tarfile.open(link, 'w') as t:
        info = tarfile.TarInfo('data/trainA/passwd'); info.type = tarfile.SYMTYPE; info.linkname = '/etc/passwd'
        t.addfile(info)
    absolute = tmp_path / 'abs.tar'
    with tarfile.open(absolute, 'w') as t:
        info = tarfile.TarInfo('/tmp/evil.txt'); info.size = 1
        t.addfile(info, io.BytesIO(b'x'))
    for archive in (slip, link, absolute):
        root = tmp_path / f'datasets_{archive.stem}'
        with pytest.raises(download_tool.DownloadError, match='unsafe member'):
            download_tool.unpack(str(archive), root=str(root))
        assert os.listdir(root) == []
    assert not (tmp_path / 'evil.txt').exists() and not (tmp_path.parent / 'evil.txt').exists()

def test_export_official_round_trip(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path)
    run('tools/export.py', '--out', tmp_path / 'official', '--ckpt', tmp_path / 'ckpt.pt')
    p = run('tools/export.py', '--out', tmp_path / 'official', '--ckpt', tmp_path / 'ckpt.pt', check=False)
    assert p.returncode == 1 and 'latest_net_G_A.pth exists' in p.out  # a pretrained model is never replaced
    assert sorted(os.listdir(tmp_path / 'official')) == [f'latest_net_{k}.pth' for k in ('D_A', 'D_B', 'G_A', 'G_B')]
    sd = torch.load(tmp_path / 'official' / 'latest_net_G_A.pth', weights_only=True)
    assert 'model.1.weight' in sd  # a bare state_dict with the official keys
    G_official = translate_tool.load_generator(str(tmp_path / 'official' / 'latest_net_G_A.pth'))[0]
    G_ours = translate_tool.load_generator(str(tmp_path / 'ckpt.pt'))[0]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(G_official(x), G_ours(x))

# -----------------------------------------------------------------------------
# reliability: interruption, broken files mid-run, numerics, unwritable output

def test_a_second_run_on_a_busy_out_dir_is_refused_and_sigterm_saves_the_first(tmp_path):
    import signal, time
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN), '--max_iters', '100000',
                          '--save_latest_freq', '100000', '--out_dir', str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / 'log.jsonl'
    while not log.exists() or len(log.read_text().splitlines()) < 2:  # until training has logged
        time.sleep(0.2)
    if os.name == 'posix':  # (the lock is POSIX's flock)
        second = run('pixelgan.py', '--out_dir', tmp_path, check=False)
        assert second.returncode == 1 and second.stderr == f"error: --out_dir {tmp_path}: another run is writing there; give another one\n"
        assert sum('"args"' in line for line in log.read_text().splitlines()) == 1  # the second wrote nothing
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0 and 'interrupted: saved' in out and '--resume' in out
    step = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step']
    assert step >= 2
    assert f'iteration {step}' in run('cyclegan.py', '--resume', '--out_dir', tmp_path, '--max_iters', step + 1).out

def test_sigterm_to_the_whole_process_group_with_loader_workers_saves(tmp_path):
    """What timeout, Slurm's scancel and systemd send: the loader workers get the signal too."""
    import signal, time
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN), '--num_threads', '2',
                          '--max_iters', '100000', '--save_latest_freq', '100000', '--out_dir', str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = tmp_path / 'log.jsonl'
    while not log.exists() or len(log.read_text().splitlines()) < 2:  # until training has logged
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130 and 'interrupted: saved' in out and 'Traceback' not in out, out
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] >= 2

def test_resuming_a_damaged_checkpoint_is_one_line(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'run')
    ckpt = torch.load(tmp_path / 'run' / 'ckpt.pt', weights_only=True)
    damaged = {'renamed': ({**ckpt, 'G_A': {k + '_old': v for k, v in ckpt['G_A'].items()}},
                           'its G_A does not load (Error(s) in loading state_dict for ResnetGenerator: Missing key(s)'),
               'misshaped': ({**ckpt, 'D_B': {**ckpt['D_B'], 'model.0.weight': torch.zeros(1)}}, 'its D_B does not load'),
               'groups': ({**ckpt, 'opt_D': {**ckpt['opt_D'], 'param_groups': ckpt['opt_D']['param_groups'] * 2}},
                          'its opt_D does not load')}
    for name, (obj, says) in damaged.items():
        (tmp_path / name).mkdir()
        torch.save(obj, tmp_path / name / 'ckpt.pt')
        p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / name, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name / 'ckpt.pt'}: {says}")
        assert lines[0].endswith('; it is damaged')

def test_the_environment_does_not_change_what_a_training_run_does(tmp_path):
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 2, '--eval_freq', 2, '--out_dir', tmp_path,
            env={**os.environ, 'FID_WEIGHTS': str(tmp_path / 'nothing.pt')})
    assert 'eval at iter 2' in p.out and 'fid' not in p.out  # FID only with --fid_weights

def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    import random, time
    rng = random.Random(0)
    for attempt in range(3):
        args = ['--resume'] if attempt else TINY_CYCLEGAN
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'cyclegan.py'), *map(str, args), '--max_iters', '100000',
                              '--save_latest_freq', '1', '--out_dir', str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] if attempt else 0
        mtime = os.path.getmtime(tmp_path / 'ckpt.pt') if attempt else 0
        while not (tmp_path / 'ckpt.pt').exists() or os.path.getmtime(tmp_path / 'ckpt.pt') == mtime:
            time.sleep(0.05)  # wait until this process saves (every iteration)
        time.sleep(rng.uniform(0, 1.0))
        p.kill(); p.wait()
        ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)  # never half-written
        assert ckpt['step'] > before and ckpt['G_A'].keys() == cyclegan.ResnetGenerator(ngf=4, n_blocks=6).state_dict().keys()

def test_a_file_that_breaks_mid_run_is_one_line_and_the_last_checkpoint_stays(tmp_path):
    make_unpaired(tmp_path / 'data', n=2)
    bad = tmp_path / 'data' / 'trainA' / '1.png'
    good = bad.read_bytes()
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36, '--max_iters', 2,
        '--out_dir', tmp_path / 'o')
    before = (tmp_path / 'o' / 'ckpt.pt').read_bytes()
    bad.write_bytes(good[:len(good) // 2])  # the header is fine, the pixels are not: found only when loaded
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / 'o', '--max_iters', 6, '--num_threads', 1, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.out
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: cannot read image")
    assert (tmp_path / 'o' / 'ckpt.pt').read_bytes() == before  # the last checkpoint, whole
    saved = 2
    bad.write_bytes(good)
    p = run('cyclegan.py', '--resume', '--out_dir', tmp_path / 'o', '--max_iters', 6)
    assert f'from iteration {saved}' in p.out and torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] == 6

def train_in_process(module, *argv):
    """module.train() inside the test process, restoring the signal handlers that it installs."""
    import signal
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return module.train(*module.parse_args([str(a) for a in argv]))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)

def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step, calls = cyclegan.train_step, []
    def step_that_diverges(*a, **kw):
        loss = real_step(*a, **kw)
        calls.append(1)
        return {k: v * float('nan') for k, v in loss.items()} if len(calls) == 3 else loss
    monkeypatch.setattr(cyclegan, 'train_step', step_that_diverges)
    with pytest.raises(SystemExit, match='NaN or infinite at iteration 3'):
        train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 6, '--out_dir', tmp_path)
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
    with pytest.raises(SystemExit, match='weights became NaN or infinite at iteration 4'):
        train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 6, '--out_dir', tmp_path)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2

def test_too_few_images_for_a_batch_is_an_error(tmp_path):
    make_unpaired(tmp_path, n=2)
    with pytest.raises(SystemExit, match='2 training images make no batch of --batch_size 4'):
        train_in_process(cyclegan, '--dataroot', tmp_path, '--batch_size', 4, '--out_dir', tmp_path / 'o', '--num_threads', 0)

def test_an_unwritable_output_folder_fails_before_training(tmp_path):
    (tmp_path / 'file').write_text('')
    for script in ('cyclegan.py', 'pixelgan.py'):
        p = run(script, '--out_dir', tmp_path / 'file' / 'out', '--max_iters', 1, check=False)
        assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(
            f"error: --out_dir {tmp_path / 'file' / 'out'}: cannot write log.jsonl there") and 'iter 1' not in p.out
    save_image(str(tmp_path / 'a.png'))
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    p = run('tools/translate.py', tmp_path / 'a.png', '--ckpt', tmp_path / 'g.pth', '--results_dir', tmp_path / 'file' / 'r', check=False)
    assert p.returncode == 1 and '--results_dir' in p.out and 'Traceback' not in p.out

def test_a_new_run_never_replaces_an_earlier_checkpoint_or_a_given_file(tmp_path):
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path / 'run')
    before = (tmp_path / 'run' / 'ckpt.pt').read_bytes()
    torch.save(official_resnet_state_dict(), tmp_path / 'pretrained.pth')
    pretrained = (tmp_path / 'pretrained.pth').read_bytes()
    for extra in ([], ['--ckpt', tmp_path / 'pretrained.pth']):
        p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--out_dir', tmp_path / 'run', *extra, check=False)
        assert p.returncode == 1 and 'exists; continue that run with --resume' in p.out and 'Traceback' not in p.out
    assert (tmp_path / 'run' / 'ckpt.pt').read_bytes() == before
    assert (tmp_path / 'pretrained.pth').read_bytes() == pretrained

def test_the_first_progress_line_leaves_out_the_first_iterations_warm_up(tmp_path, monkeypatch):
    import time
    step, calls = cyclegan.train_step, []
    def first_one_slow(*args):
        calls.append(1)
        time.sleep(3 if len(calls) == 1 else 0)  # as allocations or --compile make it
        return step(*args)
    monkeypatch.setattr(cyclegan, 'train_step', first_one_slow)
    run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 4, '--print_freq', 4, '--display_freq', 100, '--out_dir', tmp_path)
    progress = [r for r in map(json.loads, (tmp_path / 'log.jsonl').read_text().splitlines()) if 'images_per_s' in r]
    assert progress[0]['step'] == 4 and progress[0]['images_per_s'] > 2  # counting the first: at most 4 / 3 s

def test_max_iters_0_trains_nothing_and_says_so_truly(tmp_path):
    p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 0, '--out_dir', tmp_path)
    assert 'done: 0 iterations' in p.out and 'checkpoint' not in p.out.splitlines()[-1]
    assert not (tmp_path / 'ckpt.pt').exists()

def test_translate_never_writes_over_its_inputs_or_earlier_results(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    save_image(str(tmp_path / 'photos' / 'a.png'))
    before = (tmp_path / 'photos' / 'a.png').read_bytes()
    os.symlink(tmp_path / 'photos', tmp_path / 'alias')  # the input folder under another name
    for results in (tmp_path / 'photos', tmp_path / 'alias', tmp_path / 'photos' / '..' / 'photos'):
        p = run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth', '--results_dir', results, check=False)
        assert p.returncode == 1 and 'a.png would be replaced' in p.out and 'Traceback' not in p.out
    assert (tmp_path / 'photos' / 'a.png').read_bytes() == before
    run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth', '--results_dir', tmp_path / 'r')
    result = (tmp_path / 'r' / 'a.png').read_bytes()
    p = run('tools/translate.py', tmp_path / 'photos', '--ckpt', tmp_path / 'g.pth', '--results_dir', tmp_path / 'r', check=False)
    assert p.returncode == 1 and (tmp_path / 'r' / 'a.png').read_bytes() == result  # an earlier result stays

def test_an_absent_device_is_one_line_naming_the_present_ones():
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    p = run('cyclegan.py', '--device', 'cuda', '--max_iters', 1, check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "error: --device cuda: not present on this machine (present: cpu); use --device auto"]

def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    cyclegan.save_file({'step': 1}, path)
    def disk_full(obj, f):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(SystemExit, match='could not write .*No space left on device.*unchanged'):
        cyclegan.save_file({'step': 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'step': 1} and os.listdir(tmp_path) == ['ckpt.pt']

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
        assert img.min() == 0 and img.max() == top, name  # scaled by the value range, not black or white
    Image.fromarray((ramp * -5).astype(np.float32), mode='F').save(tmp_path / 'negative.tif')
    with pytest.raises(data.DataError, match='negative.tif: pixel values from -5 to 0'):
        data.load_image(str(tmp_path / 'negative.tif'))

def test_an_image_too_small_for_the_crop_is_named_when_met_in_training(tmp_path):
    save_image(str(tmp_path / 'tiny.png'), size=(10, 10))
    tf = data.Transform('crop', crop_size=16)
    with pytest.raises(data.DataError, match='tiny.png: image is 10x10'):
        tf([data.load_image(str(tmp_path / 'tiny.png'))], __import__('random').Random(0), str(tmp_path / 'tiny.png'))

# -----------------------------------------------------------------------------
# the scripts as code to read: one model each, and what they share written out identically

MODEL_SPECIFIC = ['get_parser', 'train_step', 'make_data', 'build_model', 'evaluate', 'save_samples', 'train',
                  'check_run', 'held_out_data']

def definitions(module):
    """A script's top-level functions and classes, in the order of the file."""
    tree = ast.parse(inspect.getsource(module))
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]

def test_what_both_scripts_share_is_the_same_source_in_the_same_order():
    in_both = [n for n in definitions(cyclegan) if n in definitions(pixelgan)]
    shared = [n for n in in_both if n not in MODEL_SPECIFIC]
    assert {'save_file', 'load_file', 'check_checkpoint', 'resume_args', 'setup', 'save_run', 'restore_run',
            'psnr', 'log', 'request_stop', 'bounded', 'parse_args', 'discriminator_loss', 'average_gradients',
            'NLayerDiscriminator', 'init_weights', 'any_process', 'main'} <= set(shared)
    assert shared == [n for n in definitions(pixelgan) if n in shared]  # the same order in both
    for name in shared:
        assert inspect.getsource(getattr(cyclegan, name)) == inspect.getsource(getattr(pixelgan, name)), name
    for name in MODEL_SPECIFIC:  # the list names real differences only
        assert inspect.getsource(getattr(cyclegan, name)) != inspect.getsource(getattr(pixelgan, name)), name

@pytest.mark.parametrize('script', ['cyclegan.py', 'pixelgan.py', 'data.py', *sorted(
    os.path.relpath(p, ROOT) for p in __import__('glob').glob(os.path.join(ROOT, 'tools', '*.py')))])
def test_one_statement_per_line_and_lines_of_at_most_100_characters(script):
    src = open(os.path.join(ROOT, script)).read()
    assert [i + 1 for i, line in enumerate(src.splitlines()) if len(line) > 100] == []
    tokens = tokenize.generate_tokens(io.StringIO(src).readline)
    assert [t.start[0] for t in tokens if t.type == tokenize.OP and t.string == ';'] == []
    tree = ast.parse(src)
    side_effects = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, (ast.BoolOp, ast.IfExp))]
    multi_line_choices = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.IfExp) and n.end_lineno > n.lineno]
    assert side_effects == [] and multi_line_choices == []

@pytest.mark.parametrize('module', [cyclegan, pixelgan])
def test_the_training_loop_is_flat(module):
    """train() defines no inner functions, and its loop (the one that calls train_step) is a flat
    sequence of phases: at most 70 lines, blocks at most four deep."""
    fn = ast.parse(inspect.getsource(module.train)).body[0]
    assert not [n for n in ast.walk(fn) if isinstance(n, (ast.FunctionDef, ast.Lambda)) and n is not fn]
    loops = [n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While))
             and any(isinstance(c, ast.Call) and getattr(c.func, 'id', '') == 'train_step' for c in ast.walk(n))]
    assert len(loops) == 1 and loops[0].end_lineno - loops[0].lineno + 1 <= 70
    def depth(node):
        blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try)
        inner = [depth(c) for c in ast.iter_child_nodes(node)]
        return max(inner, default=0) + isinstance(node, blocks)
    assert depth(fn) <= 4

@pytest.mark.parametrize('script, flags, says', [
    (cyclegan, ['--batch_size', '0'], '--batch_size: must be at least 1, not 0'),
    (cyclegan, ['--crop_size', '0'], '--crop_size: must be at least 1, not 0'),
    (cyclegan, ['--lr', '-1'], '--lr: must be above 0.0 and below 1.0, not -1'),
    (cyclegan, ['--lr', 'inf'], '--lr: must be above 0.0 and below 1.0, not inf'),
    (pixelgan, ['--init_gain', '1e300'], '--init_gain: must be above 0.0 and below 1.0, not 1e300'),
    (cyclegan, ['--seed', str(2 ** 64)], f'--seed: must be at least 0 and below {2 ** 63}, not {2 ** 64}'),
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
    p = run('cyclegan.py', '--netG', 'resnet_99blocks', check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and 'resnet_6blocks' in lines[0]
    assert lines[0].startswith("error: argument --netG: invalid choice: 'resnet_99blocks'")

# -----------------------------------------------------------------------------
# the catalogue of mistakes: each is one line naming what to do, and no file is lost

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

HAS_TORCHMETRICS = importlib.util.find_spec('torchmetrics') is not None

CATALOGUE = [  # (script, command line, what the one line says, files that must stay as they were)
    ('cyclegan', '--out_dir {t}/run', '{t}/run/ckpt.pt exists; continue that run with --resume', ['run/ckpt.pt']),
    ('cyclegan', '--ckpt {t}/pretrained.pth', 'pretrained.pth exists; continue', ['pretrained.pth']),
    ('translate', '{t}/photos --ckpt {t}/pretrained.pth --results_dir {t}/photos',
     'photos/a.png would be replaced; give another --results_dir', ['photos/a.png']),
    ('translate', '{t}/photos --ckpt {t}/empty.pt', 'empty.pt: not a loadable weights file', []),
    ('translate', '{t}/photos --ckpt {t}/truncated.pt', 'truncated.pt: not a loadable weights file', []),
    ('cyclegan', '--resume --ckpt {t}/no_args.pt', 'no_args.pt: a cyclegan.py checkpoint without args', ['no_args.pt']),
    ('translate', '{t}/photos --ckpt {t}/wrong_keys.pth',
     'wrong_keys.pth: not the weights of this ResnetGenerator (missing: model.23.weight; unexpected: model.99.weight)', []),
    ('pixelgan', '--resume --ckpt {t}/run/ckpt.pt', 'run/ckpt.pt is not a pixelgan.py checkpoint', ['run/ckpt.pt']),
    ('cyclegan', '--preprocess none --batch_size 2', "--preprocess none keeps each image's own size", []),
    ('pixelgan', '--preprocess scale_width', "argument --preprocess: invalid choice: 'scale_width'", []),
    ('cyclegan', '--crop_size 30', '--crop_size 30 must be a multiple of 4', []),
    ('cyclegan', '--crop_size 20 --load_size 20', "--crop_size 20 must be a multiple of 4 (the ResNet's) from 24 up", []),
    ('pixelgan', '--netD n_layers --n_layers_D 6', '--crop_size 128 is too small for --n_layers_D 6; give at most 5', []),
    ('export', '--ckpt {t}/pretrained.pth --out {t}/pretrained.pth/g.pt2', 'pretrained.pth is a file, not a folder',
     ['pretrained.pth']),
    ('cyclegan', '--resume --ckpt {t}/empty.pt', 'empty.pt: not a loadable weights file', ['empty.pt']),
    ('cyclegan', '--input_nc 1', '--lambda_identity needs --input_nc = --output_nc', []),
    pytest.param('pixelgan', '--device cuda', '--device cuda: not present on this machine (present: cpu)', [],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')),
    ('pixelgan', '--fid_weights {t}/nothing.pt', '--fid_weights {t}/nothing.pt: no such file', []),
    ('export', '--ckpt {t}/pretrained.pth --out {t}/official', 'pretrained.pth is not a pixelgan.py checkpoint',
     ['pretrained.pth']),
    ('export', '--ckpt {t}/run/ckpt.pt --out {t}/g.pt2', 'ckpt.pt: not a generator state_dict', ['run/ckpt.pt']),
    ('export', '--ckpt {t}/empty.pt --out {t}/g.onnx', 'empty.pt: not a loadable weights file', ['empty.pt']),
    ('evaluate', '--ckpt {t}/no_args.pt', 'no_args.pt: a cyclegan.py checkpoint without args', ['no_args.pt']),
    ('evaluate', '--real {t}/photos --fake {t}/photos --fid_weights {t}/nothing.pt', 'nothing.pt: no such file', []),
    ('evaluate', '', 'give --ckpt FILE, or --real DIR and --fake DIR', []),
    ('bench', 'cyclegan --crop_size 30', '--crop_size 30 must be a multiple of 4', []),
    ('bench', 'nothing', 'name the script first: python tools/bench.py cyclegan|pixelgan', []),
    pytest.param('cyclegan', '--fid_weights {t}/empty.pt', 'empty.pt: not a loadable weights file', ['empty.pt'],
                 marks=pytest.mark.skipif(not HAS_TORCHMETRICS, reason='optional extra: pip install torchmetrics')),
]

@pytest.mark.parametrize('script, command, says, unchanged', CATALOGUE)
def test_every_mistake_is_one_line_and_loses_nothing(tmp_path, script, command, says, unchanged):
    import signal
    make_catalogue_files(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in unchanged}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = command.format(t=tmp_path).split() + ['--out_dir', str(tmp_path / 'new'), '--num_threads', '0']
    if '--out_dir' in command or script in ('export', 'evaluate', 'bench', 'translate'):
        argv = command.format(t=tmp_path).split()
    modules = dict(cyclegan=cyclegan, pixelgan=pixelgan, export=export_tool, evaluate=evaluate_tool, bench=bench,
                   translate=translate_tool)
    try:
        with pytest.raises(SystemExit) as e:
            modules[script].main(argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message
    assert says.format(t=tmp_path) in message
    assert {f: (tmp_path / f).read_bytes() for f in unchanged} == before

def test_scale_width_gives_sides_the_networks_take():
    img = Image.new('RGB', (50, 37))
    out, = data.Transform('scale_width', load_size=30, crop_size=30)([img], __import__('random').Random(0))
    assert out.shape == (3, 24, 32)  # 30 wide -> 32, and 37 * 30 / 50 = 22.2 high -> 24

def test_translate_takes_images_of_any_size_even_tiny_ones(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    for size in ((1, 1), (5, 3), (37, 23)):
        save_image(str(tmp_path / 'in' / f'{size[0]}x{size[1]}.png'), size=size)
    translate_tool.main([str(tmp_path / 'in'), '--ckpt', str(tmp_path / 'g.pth'), '--results_dir', str(tmp_path / 'out')])
    for size in ((1, 1), (5, 3), (37, 23)):
        assert Image.open(tmp_path / 'out' / f'{size[0]}x{size[1]}.png').size == size

def test_held_out_images_of_one_domain_only_still_train(tmp_path):
    make_unpaired(tmp_path / 'data')
    import shutil
    shutil.rmtree(tmp_path / 'data' / 'testB')
    train_in_process(cyclegan, '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--load_size', 36, '--max_iters', 2,
                     '--out_dir', tmp_path / 'o')
    assert (tmp_path / 'o' / 'samples_0000002.png').exists()

# -----------------------------------------------------------------------------
# every generator file the official code can write, and images of one channel

OFFICIAL_VARIANTS = [  # (the network as the official code builds it, a side)
    *[(functools.partial(cyclegan.ResnetGenerator, *nc, ngf=4, norm=norm, n_blocks=6, dropout=dropout), 32)
      for norm in ('instance', 'batch', 'none') for dropout in (False, True) for nc in ((3, 3), (1, 1), (1, 3))],
    (functools.partial(cyclegan.ResnetGenerator, 3, 3, ngf=4, n_blocks=9), 32),
    *[(functools.partial(pixelgan.UnetGenerator, *nc, num_downs=downs, ngf=4, norm=norm), 2 ** downs)
      for norm in ('batch', 'instance', 'none') for nc in ((3, 3), (1, 1), (3, 1)) for downs in (7, 8)],
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
    loaded, _ = translate_tool.load_generator(str(tmp_path / 'official.pth'))
    x = torch.randn(1, make.args[0] if make.args else 3, side, side)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), G(x))

def test_16_bit_grayscale_keeps_its_precision_into_the_network(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 4096 levels
    Image.fromarray(ramp).save(tmp_path / 'mri.png')
    x = data.Transform('none', train=False)([data.load_image(str(tmp_path / 'mri.png'), channels=1)], None)[0]
    assert x.shape == (1, 64, 64) and len(x.unique()) == 4096
    torch.testing.assert_close(x[0], torch.from_numpy(ramp / 65535.0 * 2 - 1).float())

def save_gray(path, size=40, seed=0, bits=16):
    arr = np.random.default_rng(seed).integers(0, 2 ** bits, (size, size))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint16 if bits == 16 else np.uint8)).save(path)

def test_one_channel_unpaired_and_paired_data_train_and_translate_end_to_end(tmp_path):
    for d in ('trainA', 'trainB', 'testA', 'testB'):
        for i in range(2):
            save_gray(str(tmp_path / 'unpaired' / d / f'{i}.png'), seed=hash(d) % 100 + i)
    for phase in ('train', 'val'):
        for i in range(2):
            save_gray(str(tmp_path / 'paired' / 'A' / phase / f'{i}.png'), size=140, seed=i)
            save_gray(str(tmp_path / 'paired' / 'B' / phase / f'{i}.png'), size=140, seed=i + 7, bits=8)
    one_channel = ['--input_nc', 1, '--output_nc', 1, '--max_iters', 2]
    train_in_process(cyclegan, '--dataroot', tmp_path / 'unpaired', *TINY_CYCLEGAN, '--load_size', 36, *one_channel,
                     '--out_dir', tmp_path / 'c')
    train_in_process(pixelgan, '--dataroot', tmp_path / 'paired', *TINY_PIXELGAN, '--load_size', 140, *one_channel,
                     '--out_dir', tmp_path / 'p')
    assert torch.load(tmp_path / 'c' / 'ckpt.pt', weights_only=True)['G_A']['model.1.weight'].shape[1] == 1
    assert torch.load(tmp_path / 'p' / 'ckpt.pt', weights_only=True)['D']['net.0.weight'].shape[1] == 2  # input + output
    save_gray(str(tmp_path / 'scans' / 'x.png'), size=50)
    for out in ('c', 'p'):
        translate_tool.main([str(tmp_path / 'scans'), '--ckpt', str(tmp_path / out / 'ckpt.pt'),
                             '--results_dir', str(tmp_path / f'results_{out}')])
        result = Image.open(tmp_path / f'results_{out}' / 'x.png')
        assert result.mode == 'L' and result.size == (50, 50)  # 8-bit grayscale, as every image tool reads it

def test_identity_loss_needs_as_many_channels_in_both_domains(tmp_path):
    with pytest.raises(SystemExit, match='--lambda_identity needs --input_nc = --output_nc'):
        train_in_process(cyclegan, *TINY_CYCLEGAN, '--input_nc', 1, '--out_dir', tmp_path)
    train_in_process(cyclegan, *TINY_CYCLEGAN, '--input_nc', 1, '--lambda_identity', 0, '--max_iters', 1,
                     '--out_dir', tmp_path)  # the synthetic task, A in grayscale: colourisation
    assert (tmp_path / 'ckpt.pt').exists()

# -----------------------------------------------------------------------------
# deployment: the generator exported for use without this code

def exported_generators(tmp_path):
    """A tiny CycleGAN and a tiny U-Net-128 pix2pix checkpoint, and their generators as --translate runs them."""
    train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'c')
    train_in_process(pixelgan, *TINY_PIXELGAN, '--max_iters', 1, '--out_dir', tmp_path / 'p')
    G_c = translate_tool.load_generator(str(tmp_path / 'c' / 'ckpt.pt'))[0].eval()
    G_p = translate_tool.load_generator(str(tmp_path / 'p' / 'ckpt.pt'))[0].eval()
    return [(cyclegan, tmp_path / 'c' / 'ckpt.pt', G_c, [(8, 8), (36, 52)]),
            (pixelgan, tmp_path / 'p' / 'ckpt.pt', G_p, [(128, 128), (256, 384)])]

def test_export_pt2_runs_at_any_size_like_the_generator(tmp_path):
    for module, ckpt, G, sizes in exported_generators(tmp_path):
        path = tmp_path / f'{module.SCRIPT}.pt2'
        export_tool.main(['--out', str(path), '--ckpt', str(ckpt)])
        exported = torch.export.load(str(path)).module()  # what a deployment does, without this code
        for batch, size in zip((1, 3), sizes):  # batch, height and width free
            x = torch.rand(batch, 3, *size) * 2 - 1
            with torch.no_grad():
                torch.testing.assert_close(exported(x), G(x), rtol=1e-4, atol=1e-4)

def test_export_onnx_runs_at_any_size_like_the_generator(tmp_path):
    pytest.importorskip('onnxscript', reason='optional extra: pip install onnx onnxscript onnxruntime')
    onnxruntime = pytest.importorskip('onnxruntime', reason='optional extra: pip install onnxruntime')
    for module, ckpt, G, sizes in exported_generators(tmp_path):
        path = tmp_path / f'{module.SCRIPT}.onnx'
        export_tool.main(['--out', str(path), '--ckpt', str(ckpt)])
        session = onnxruntime.InferenceSession(str(path))
        assert os.listdir(tmp_path).count(path.name) == 1 and not (tmp_path / (path.name + '.data')).exists()
        for batch, size in zip((1, 3), sizes):
            x = torch.rand(batch, 3, *size) * 2 - 1
            y = session.run(None, {'x': x.numpy()})[0]
            with torch.no_grad():
                torch.testing.assert_close(torch.from_numpy(y), G(x), rtol=1e-4, atol=1e-4)

def test_export_never_replaces_a_file(tmp_path):
    train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'c')
    (tmp_path / 'g.pt2').write_bytes(b'mine')
    p = run('tools/export.py', '--ckpt', tmp_path / 'c' / 'ckpt.pt', '--out', tmp_path / 'g.pt2', check=False)
    assert p.returncode == 1 and 'g.pt2 exists' in p.out and (tmp_path / 'g.pt2').read_bytes() == b'mine'

def test_dtype_auto_is_decided_anew_on_the_machine_that_resumes(tmp_path):
    train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['args']['dtype'] == 'auto'

# -----------------------------------------------------------------------------
# FID and KID (optional extra: torchmetrics; the standard Inception weights also need torch-fidelity)

class StandInFeatures(torch.nn.Module):
    """A small stand-in for the Inception network: 2x2 cell means and per-channel deviations."""
    def forward(self, x):
        return torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.std((2, 3))], 1)

def stand_in_file(path):
    """The stand-in as TorchScript (.pt) or torch.export (.pt2), the two formats --fid_weights takes."""
    if str(path).endswith('.pt2'):
        batch = torch.export.Dim('batch', min=2)
        ep = torch.export.export(StandInFeatures(), (torch.zeros(4, 3, 299, 299),), dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(path))
    else:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            torch.jit.save(torch.jit.script(StandInFeatures()), str(path))
    return path

def reference_fid_kid(real, fake):
    """FID and KID written out in numpy (float64): FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2);
    KID = the unbiased MMD^2 of the kernel (x.y / d + 1)^3 over all samples (equal counts)."""
    real, fake = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    fid = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    m, d = len(real), real.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(real, real), k(fake, fake), k(real, fake)
    kid = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / m ** 2
    return fid, kid

def test_fid_of_two_gaussians_is_the_closed_form():
    """Features with exact sample moments: N(0, 1 I) against N(mu, 4 I) in 3 dimensions, |mu|^2 = 9:
    FID = |mu|^2 + d (sigma1 - sigma2)^2 = 9 + 3 = 12; a set against itself: 0. (KID, an unbiased
    estimate, can go below 0: its reference check is the next test.)"""
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    signs = torch.cat([torch.eye(3), -torch.eye(3)])  # 6 points: mean 0, covariance 2/5 I (n - 1 = 5)
    real = signs * (5 / 2) ** 0.5  # covariance I
    fake = torch.tensor([1.0, 2.0, 2.0]) + signs * 10 ** 0.5  # covariance 4 I
    assert fid.FeatureNetwork.distances(real, fake)['fid'] == pytest.approx(12, rel=1e-6)
    assert fid.FeatureNetwork.distances(real, real)['fid'] == pytest.approx(0, abs=1e-6)

def test_fid_and_kid_agree_with_a_reference_on_the_same_features():
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=gen)
    fake = 0.5 + 1.5 * torch.randn(40, 8, generator=gen) @ torch.randn(8, 8, generator=gen) / 3
    reference_fid, reference_kid = reference_fid_kid(real, fake)
    ours = fid.FeatureNetwork.distances(real, fake)
    assert ours['fid'] == pytest.approx(reference_fid, rel=1e-3)
    assert ours['kid'] == pytest.approx(reference_kid, rel=1e-3) and ours['kid_std'] > 0
    assert fid.FeatureNetwork.distances(real, fake) == ours  # KID's subsets come from a fixed seed
    state = torch.get_rng_state()
    fid.FeatureNetwork.distances(real, fake)
    assert torch.equal(torch.get_rng_state(), state)  # and the training's random stream is untouched

def test_feature_network_rounds_to_8_bits_and_reads_both_formats(tmp_path):
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    gray = x[:, :1]
    for name in ('stand_in.pt', 'stand_in.pt2'):
        features = fid.FeatureNetwork(str(stand_in_file(tmp_path / name)), torch.device('cpu'))
        levels = ((x + 1) * 127.5).round() / 127.5 - 1
        expected = StandInFeatures()(F.interpolate(levels, size=(299, 299), mode='bilinear', align_corners=False))
        torch.testing.assert_close(features(x), expected)
        torch.testing.assert_close(features(gray), features(gray.expand(-1, 3, -1, -1)))

def test_the_standard_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """The path torchmetrics and torch-fidelity take for pt_inception-2015-12-05-6726825d.pth, on a
    file of random weights with the same keys made here (nothing is downloaded)."""
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics torch-fidelity')
    fidelity = pytest.importorskip('torch_fidelity.feature_extractor_inceptionv3',
                                   reason='optional extra: pip install torch-fidelity')
    from torchmetrics.image.fid import NoTrainInceptionV3
    with monkeypatch.context() as m:  # build the network without its weights, to write a file like theirs
        m.setattr(fidelity, 'load_state_dict_from_url', lambda *a, **k: None)
        m.setattr(fidelity.FeatureExtractorInceptionV3, 'load_state_dict', lambda self, sd: None)
        net = NoTrainInceptionV3('inception-v3-compat', ['2048'])
    weights = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
    torch.save(net.state_dict(), weights)
    features = fid.FeatureNetwork(str(weights), torch.device('cpu'))
    assert features.inception
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = features(x)
    assert out.shape == (2, 2048)
    levels = ((x + 1) * 127.5).round().to(torch.uint8)
    net.load_state_dict(torch.load(weights, weights_only=True))
    torch.testing.assert_close(out, net(levels))  # torch-fidelity's own resizing of 8-bit images

def test_fid_and_kid_are_logged_and_keep_the_best_checkpoint(tmp_path):
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    weights = stand_in_file(tmp_path / 'stand_in.pt')
    make_unpaired(tmp_path / 'data')
    out = tmp_path / 'out'
    run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--max_iters', 4, '--eval_freq', 2,
        '--fid_weights', weights, '--out_dir', out)
    evals = [r for r in map(json.loads, (out / 'log.jsonl').read_text().splitlines()) if 'fid_AtoB' in r]
    assert [r['step'] for r in evals] == [2, 4]
    assert all({'kid_AtoB', 'fid_BtoA', 'kid_BtoA'} <= set(r) for r in evals)
    sums = [r['fid_AtoB'] + r['fid_BtoA'] for r in evals]
    best = torch.load(out / 'best.pt', weights_only=True)
    assert best['best_fid'] == pytest.approx(min(sums)) and best['step'] == evals[sums.index(min(sums))]['step']
    assert torch.load(out / 'ckpt.pt', weights_only=True)['best_fid'] == pytest.approx(min(sums))
    # the same numbers from the checkpoint alone, standalone; the environment variable names the file
    p = run('tools/evaluate.py', '--ckpt', out / 'ckpt.pt', env={**os.environ, 'FID_WEIGHTS': str(weights)})
    alone = json.loads(p.stdout.splitlines()[-1])
    for k in ('fid_AtoB', 'kid_AtoB', 'fid_BtoA', 'kid_BtoA'):
        assert alone[k] == pytest.approx(evals[-1][k], rel=1e-5), k
    assert 'fid_AtoB' in p.out
    # a new run does not replace the earlier run's best.pt
    (out / 'ckpt.pt').unlink()
    before = (out / 'best.pt').read_bytes()
    p = run('cyclegan.py', '--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--max_iters', 2,
            '--fid_weights', weights, '--out_dir', out, check=False)
    assert p.returncode != 0 and 'best.pt exists' in p.out and (out / 'best.pt').read_bytes() == before

def test_pixelgan_fid_at_evaluation_and_standalone(tmp_path):
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    weights = stand_in_file(tmp_path / 'stand_in.pt2')
    out = tmp_path / 'out'
    run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 2, '--eval_freq', 2, '--fid_weights', weights,
        '--out_dir', out)
    last = [r for r in map(json.loads, (out / 'log.jsonl').read_text().splitlines()) if 'fid' in r][-1]
    assert last['fid'] > 0 and 'kid' in last and (out / 'best.pt').exists()
    p = run('tools/evaluate.py', '--ckpt', out / 'ckpt.pt', '--fid_weights', weights)
    alone = json.loads(p.stdout.splitlines()[-1])
    assert alone['fid'] == pytest.approx(last['fid'], rel=1e-5) and alone['kid'] == pytest.approx(last['kid'], rel=1e-5)

def test_a_bad_feature_network_fails_at_start(tmp_path):
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    batch = torch.export.Dim('batch', min=2)
    four_d = torch.export.export(torch.nn.AdaptiveAvgPool2d(1), (torch.zeros(4, 3, 299, 299),),
                                 dynamic_shapes=({0: batch},))
    torch.export.save(four_d, str(tmp_path / 'four_d.pt2'))
    one_image = torch.export.export(StandInFeatures(), (torch.zeros(1, 3, 299, 299),))  # batch fixed at 1
    torch.export.save(one_image, str(tmp_path / 'one_image.pt2'))
    for name, says in [('four_d.pt2', 'gives features of shape (2, 3, 1, 1) for 2 images'),
                       ('one_image.pt2', 'the network fails on a batch of 2 images')]:
        p = run('pixelgan.py', *TINY_PIXELGAN, '--max_iters', 2, '--fid_weights', tmp_path / name,
                '--out_dir', tmp_path / f'run_{name}', check=False)
        assert p.returncode != 0 and p.out.strip().splitlines()[-1].startswith('error: --fid_weights')
        assert says in p.out and not (tmp_path / f'run_{name}' / 'ckpt.pt').exists()

def test_an_evaluation_at_the_end_of_a_run_leaves_resume_exact(tmp_path):
    """An evaluation draws loader seeds: it must not move the training's random stream, or a run
    stopped where it evaluated would resume differently from an uninterrupted one (image pool)."""
    pytest.importorskip('torchmetrics', reason='optional extra: pip install torchmetrics')
    weights = stand_in_file(tmp_path / 'stand_in.pt')
    make_unpaired(tmp_path / 'data')
    common = ['--dataroot', tmp_path / 'data', *TINY_CYCLEGAN, '--pool_size', 2, '--eval_freq', 4,
              '--fid_weights', weights]
    run('cyclegan.py', *common, '--max_iters', 6, '--out_dir', tmp_path / 'straight')
    run('cyclegan.py', *common, '--max_iters', 3, '--out_dir', tmp_path / 'resumed')  # evaluates at 3
    run('cyclegan.py', '--resume', '--max_iters', 6, '--out_dir', tmp_path / 'resumed')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('straight', 'resumed'))
    for name in cyclegan.NETWORKS:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name

# -----------------------------------------------------------------------------
# nothing lost: feature networks, exports, integer images, messages of the tools

needs_torchmetrics = pytest.mark.skipif(not HAS_TORCHMETRICS, reason='optional extra: pip install torchmetrics')

@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
    """A tiny CycleGAN and a tiny U-Net-128 pix2pix checkpoint (one iteration each, built-in tasks)."""
    tmp = tmp_path_factory.mktemp('runs')
    train_in_process(cyclegan, *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp / 'c')
    train_in_process(pixelgan, *TINY_PIXELGAN, '--max_iters', 1, '--out_dir', tmp / 'p')
    return tmp / 'c' / 'ckpt.pt', tmp / 'p' / 'ckpt.pt'

def one_line(p):
    """The process's only stderr line, after checking that it failed."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and 'Traceback' not in p.out, p.out
    return lines[0]

# -----------------------------------------------------------------------------
# 1. no code from a feature network: torch.export.load falls back to weights_only=False

class RunsCode:
    """Unpickled, this runs a shell command: what a hostile file would hold."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def rewritten_pt2(good, path, replace):
    """The .pt2 archive good with members replaced or added (names below its root folder)."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, 'w') as zout:
        root = zin.namelist()[0].split('/')[0]
        for info in zin.infolist():
            zout.writestr(info.filename, replace.pop(info.filename[len(root) + 1:], None) or zin.read(info.filename))
        for name, content in replace.items():
            zout.writestr(f'{root}/{name}', content)
    return path

def hostile_pt2s(tmp, marker):
    """Every path by which torch 2.14's torch.export.load unpickles without weights_only: the sample
    inputs (retried with weights_only=False), a weight or a constant marked use_pickle, an opaque
    constant (pickle.loads)."""
    good = stand_in_file(tmp / 'good.pt2')
    code = pickle.dumps(RunsCode(marker), protocol=2)
    pickled = lambda path_name: json.dumps({'config': {'c': {'path_name': path_name, 'is_param': False,
                                                             'use_pickle': True, 'tensor_meta': None}}}).encode()
    return [rewritten_pt2(good, tmp / 'sample_inputs.pt2', {'data/sample_inputs/model.pt': code}),
            rewritten_pt2(good, tmp / 'weight.pt2', {'data/weights/model_weights_config.json': pickled('weight_0'),
                                                    'data/weights/weight_0': code}),
            rewritten_pt2(good, tmp / 'constant.pt2', {'data/constants/model_constants_config.json': pickled('tensor_0'),
                                                      'data/constants/tensor_0': code}),
            rewritten_pt2(good, tmp / 'opaque.pt2', {'data/constants/model_constants_config.json': pickled('opaque_obj_0'),
                                                    'data/constants/opaque_obj_0': code})]

@needs_torchmetrics
def test_a_feature_network_that_would_run_code_is_refused_and_runs_none(tmp_path):
    marker = tmp_path / 'code_ran'
    save_image(str(tmp_path / 'images' / 'a.png'))
    save_image(str(tmp_path / 'images' / 'b.png'), seed=1)
    hostile = hostile_pt2s(tmp_path, marker)
    for path in hostile:
        p = run('tools/evaluate.py', '--real', tmp_path / 'images', '--fake', tmp_path / 'images',
                '--fid_weights', path, check=False)
        assert one_line(p).startswith(f'error: --fid_weights {path}: refused: it holds pickled Python objects')
        assert not marker.exists(), path.name
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 1, '--out_dir', tmp_path / 'o', '--fid_weights',
            hostile[0], check=False)  # the training entry point: the same load
    assert p.out.strip().splitlines()[-1].startswith(f'error: --fid_weights {hostile[0]}: refused')
    assert p.returncode == 1 and not marker.exists() and not (tmp_path / 'o' / 'ckpt.pt').exists()
    assert fid.FeatureNetwork(str(tmp_path / 'good.pt2'), torch.device('cpu'))  # an honest file still loads

# -----------------------------------------------------------------------------
# 6. a feature network is tried at start-up on every batch size it will be given

class BrightFails(torch.nn.Module):
    """Features until an image is bright: passes the start-up check (black images), fails later."""
    def forward(self, x):
        if bool((x > 0.5).any()):
            raise RuntimeError('bright images are not supported')
        return x.mean((2, 3))

@needs_torchmetrics
def test_a_feature_network_is_tried_on_the_batch_sizes_it_will_get(tmp_path):
    net = torch.nn.AdaptiveAvgPool2d(2)
    fixed = torch.export.export(torch.nn.Sequential(net, torch.nn.Flatten()), (torch.zeros(2, 3, 299, 299),))
    torch.export.save(fixed, str(tmp_path / 'batch_of_2.pt2'))  # runs on 2 images, as the old check tried
    with pytest.raises(SystemExit) as e:
        fid.FeatureNetwork(str(tmp_path / 'batch_of_2.pt2'), torch.device('cpu'))
    assert str(e.value.code).startswith(f"error: --fid_weights {tmp_path / 'batch_of_2.pt2'}: the network fails on "
                                        f"a batch of 3 images")
    up_to_8 = torch.export.export(torch.nn.Sequential(net, torch.nn.Flatten()), (torch.zeros(4, 3, 299, 299),),
                                  dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=8)},))
    torch.export.save(up_to_8, str(tmp_path / 'up_to_8.pt2'))
    features = fid.FeatureNetwork(str(tmp_path / 'up_to_8.pt2'), torch.device('cpu'))
    assert features(torch.zeros(16, 3, 20, 20)).shape == (16, 12)  # an evaluation's batch of 16: in pieces

@needs_torchmetrics
def test_a_feature_network_failing_at_an_evaluation_is_one_line(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(BrightFails()), str(tmp_path / 'bright_fails.pt'))
    p = run('cyclegan.py', *TINY_CYCLEGAN, '--max_iters', 2, '--eval_freq', 2, '--fid_weights',
            tmp_path / 'bright_fails.pt', '--out_dir', tmp_path / 'o', check=False)
    last = p.out.strip().splitlines()[-1]
    assert p.returncode == 1 and 'Traceback' not in p.out, p.out
    assert last.startswith(f"error: --fid_weights {tmp_path / 'bright_fails.pt'}: the network fails on a batch")
    assert last.endswith('(builtins.RuntimeError: bright images are not supported)')  # TorchScript's own line

# -----------------------------------------------------------------------------
# 8. under torchrun only rank 0 evaluates: FID and KID must not wait for the other processes

@needs_torchmetrics
def test_torchrun_with_fid_evaluates_on_rank_0_and_finishes(tmp_path):
    weights = stand_in_file(tmp_path / 'stand_in.pt')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'cyclegan.py'), *map(str, TINY_CYCLEGAN), '--max_iters', '2',
                        '--eval_freq', '2', '--fid_weights', str(weights), '--out_dir', str(tmp_path / 'o')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    evals = [r for r in map(json.loads, (tmp_path / 'o' / 'log.jsonl').read_text().splitlines()) if 'fid_AtoB' in r]
    assert [r['step'] for r in evals] == [2] and (tmp_path / 'o' / 'best.pt').exists()
    assert torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['step'] == 2

# -----------------------------------------------------------------------------
# 9. integer images scale by their type's range, not by the values they happen to hold

def test_integer_images_scale_by_their_bit_depth_not_by_their_values(tmp_path):
    dark = np.full((8, 8), 250, dtype=np.uint16)
    bright = dark.copy()
    bright[0, 0] = 60000
    Image.fromarray(dark).save(tmp_path / 'dark.png')
    Image.fromarray(bright).save(tmp_path / 'bright.png')
    Image.fromarray(dark.astype(np.int32), mode='I').save(tmp_path / 'dark32.tif')
    for name in ('dark.png', 'bright.png', 'dark32.tif'):
        gray = np.asarray(data.load_image(str(tmp_path / name), channels=1))
        assert gray[4, 4] == pytest.approx(250 / 65535), name  # 0.0038 in every file, not 0.98 in the dark ones
        rgb = np.asarray(data.load_image(str(tmp_path / name), channels=3))
        assert (rgb[4, 4] == round(250 / 65535 * 255)).all(), name
    floats = np.full((8, 8), 0.25, dtype=np.float32)
    Image.fromarray(floats, mode='F').save(tmp_path / 'float.tif')  # floats alone: by their range
    assert np.asarray(data.load_image(str(tmp_path / 'float.tif'), channels=1))[4, 4] == pytest.approx(0.25)

# -----------------------------------------------------------------------------
# 10, 11, 4. exports: sizes the generator cannot keep, files that cannot be written, damaged checkpoints

def test_a_pt2_export_refuses_sizes_the_generator_would_not_keep(tmp_path):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    export_tool.main(['--ckpt', str(tmp_path / 'g.pth'), '--out', str(tmp_path / 'g.pt2')])
    G = translate_tool.load_generator(str(tmp_path / 'g.pth'))[0].eval()
    exported = torch.export.load(str(tmp_path / 'g.pt2')).module()
    x = torch.rand(2, 3, 12, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(exported(x), G(x), rtol=1e-4, atol=1e-4)
        for size in ((10, 12), (12, 10)):  # G itself would return 12 x 12
            with pytest.raises(AssertionError, match=r'% 4 == 0'):
                exported(torch.zeros(1, 3, *size))

def test_an_onnx_export_fails_on_such_sizes_as_its_docstring_says(tmp_path):
    pytest.importorskip('onnxscript', reason='optional extra: pip install onnx onnxscript onnxruntime')
    onnxruntime = pytest.importorskip('onnxruntime', reason='optional extra: pip install onnxruntime')
    assert 'onnxruntime fails inside it with a shape error' in ' '.join(export_tool.__doc__.split())
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    export_tool.main(['--ckpt', str(tmp_path / 'g.pth'), '--out', str(tmp_path / 'g.onnx')])
    session = onnxruntime.InferenceSession(str(tmp_path / 'g.onnx'))
    assert session.run(None, {'x': np.zeros((1, 3, 12, 8), np.float32)})[0].shape == (1, 3, 12, 8)
    with pytest.raises(Exception, match='ONNXRuntimeError'):
        session.run(None, {'x': np.zeros((1, 3, 10, 12), np.float32)})

def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    torch.save(official_resnet_state_dict(), tmp_path / 'g.pth')
    (tmp_path / 'folder.pt2').mkdir()
    (tmp_path / 'file').write_text('')
    cases = [(tmp_path / 'folder.pt2', f"error: --out {tmp_path / 'folder.pt2'} is a folder"),
             (tmp_path / 'file' / 'g.pt2', f"error: --out {tmp_path / 'file' / 'g.pt2'}: {tmp_path / 'file'} is a file"),
             (tmp_path / 'file' / 'sub' / 'g.onnx', 'cannot write it (Not a directory)')]
    if os.geteuid() != 0:  # (root writes anyway)
        (tmp_path / 'read_only').mkdir(mode=0o555)
        cases.append((tmp_path / 'read_only' / 'g.pt2', 'cannot write it (Permission denied)'))
    for out, says in cases:
        line = one_line(run('tools/export.py', '--ckpt', tmp_path / 'g.pth', '--out', out, check=False))
        assert line.startswith('error: --out') and says in line
    def disk_full(fd):  # a full disk, met when the exported program is written
        if os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    out = tmp_path / 'new' / 'g.pt2'
    with pytest.raises(SystemExit) as e:
        export_tool.main(['--ckpt', str(tmp_path / 'g.pth'), '--out', str(out)])
    assert e.value.code.startswith(f"error: could not write {out} ([Errno 28] No space left on device)")
    assert os.listdir(tmp_path / 'new') == []  # neither the file nor a temporary one

def test_export_official_checks_every_weight_loads_before_writing(tmp_path, tiny_runs):
    ckpt = torch.load(tiny_runs[0], weights_only=True)
    renamed = dict(ckpt['G_B'])
    renamed['model.1.weight_old'] = renamed.pop('model.1.weight')
    misshaped = {**ckpt['D_A'], 'model.0.weight': torch.zeros(1, 2, 3)}
    cases = {'renamed.pt': ({**ckpt, 'G_B': renamed}, 'G_B does not load (Error(s) in loading state_dict for '
                                                      'ResnetGenerator: Missing key(s) in state_dict: "model.1.weight"'),
             'misshaped.pt': ({**ckpt, 'D_A': misshaped}, 'D_A does not load (Error(s) in loading state_dict for '
                                                          'NLayerDiscriminator: size mismatch for model.0.weight'),
             'no_weights.pt': ({**ckpt, 'G_A': 'nothing'}, 'G_A does not load (Expected state_dict to be dict-like')}
    for name, (damaged, says) in cases.items():
        torch.save(damaged, tmp_path / name)
        line = one_line(run('tools/export.py', '--ckpt', tmp_path / name, '--out', tmp_path / 'official', check=False))
        assert line.startswith(f"error: {tmp_path / name}: ") and says in line
        assert line.endswith('; the checkpoint is damaged')
        assert not (tmp_path / 'official').exists()
    (tmp_path / 'file').write_text('')
    line = one_line(run('tools/export.py', '--ckpt', tiny_runs[0], '--out', tmp_path / 'file', check=False))
    assert f"{tmp_path / 'file'} is a file, not a folder" in line and (tmp_path / 'file').read_text() == ''

def test_export_official_writes_all_files_or_none(tmp_path, tiny_runs, monkeypatch):
    sizes = []
    def disk_full_at_the_third(fd):
        if os.fstat(fd).st_size > 0:
            sizes.append(os.fstat(fd).st_size)
        if len(sizes) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full_at_the_third)
    with pytest.raises(SystemExit, match='could not write .*No space left on device'):
        export_tool.main(['--ckpt', str(tiny_runs[0]), '--out', str(tmp_path / 'official')])
    assert os.listdir(tmp_path / 'official') == []  # the two written before are gone too

# -----------------------------------------------------------------------------
# 15. $FID_WEIGHTS adds FID where it can and says in one line where it cannot; --fid_weights stays strict

def test_fid_weights_from_the_environment_is_a_note_where_it_cannot_be_used(tmp_path, tiny_runs):
    missing = tmp_path / 'nothing.pt'
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[0], env={**os.environ, 'FID_WEIGHTS': str(missing)})
    assert p.stderr.strip().splitlines() == [f'note: no FID or KID: --fid_weights {missing}: no such file']
    scores = json.loads(p.stdout.splitlines()[-1])
    assert 'psnr_AtoB' in scores and 'fid_AtoB' not in scores
    line = one_line(run('tools/evaluate.py', '--ckpt', tiny_runs[0], '--fid_weights', missing, check=False))
    assert line == f'error: --fid_weights {missing}: no such file'  # asked for here: an error

@needs_torchmetrics
def test_fid_weights_from_the_environment_adds_fid_where_it_can(tmp_path, tiny_runs):
    weights = stand_in_file(tmp_path / 'stand_in.pt')
    env = {**os.environ, 'FID_WEIGHTS': str(weights)}
    assert 'fid' in json.loads(run('tools/evaluate.py', '--ckpt', tiny_runs[1], env=env).stdout.splitlines()[-1])
    save_image(str(tmp_path / 'one_pair' / 'test' / '1.png'), size=(256, 128))  # too few held-out pairs for FID
    p = run('tools/evaluate.py', '--ckpt', tiny_runs[1], '--dataroot', tmp_path / 'one_pair', env=env)
    note = p.stderr.strip().splitlines()[-1]
    assert note.startswith('note: no FID or KID: ') and str(tmp_path / 'one_pair') in note
    scores = json.loads(p.stdout.splitlines()[-1])
    assert 'psnr' in scores and 'fid' not in scores

# -----------------------------------------------------------------------------
# 17. messages that say what is wrong

def test_fid_weights_naming_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(SystemExit) as e:
        fid.FeatureNetwork(str(tmp_path), torch.device('cpu'))
    assert e.value.code == f"error: --fid_weights {tmp_path}: a folder, not a file; give the weights file"

def test_unpack_of_a_non_archive_a_nameless_archive_or_a_bare_file(tmp_path):
    (tmp_path / 'notes.txt').write_text('not an archive')
    with zipfile.ZipFile(tmp_path / '..zip', 'w') as z:
        z.writestr('horse2zebra/trainA/1.jpg', b'a')
    with zipfile.ZipFile(tmp_path / 'one.zip', 'w') as z:
        z.writestr('1.jpg', b'a')
    (tmp_path / 'datasets').mkdir()
    for archive, says in (('notes.txt', 'error: notes.txt: not a zip or tar archive'),
                          ('..zip', 'error: ..zip: no dataset name in this file name; rename it (NAME.zip)')):
        assert one_line(run('tools/download.py', 'unpack', archive, cwd=tmp_path, check=False)) == says
    assert os.listdir(tmp_path / 'datasets') == []
    p = run('tools/download.py', 'unpack', 'one.zip', cwd=tmp_path)
    assert p.stdout.strip() == os.path.join('datasets', 'one')
    assert (tmp_path / 'datasets' / 'one' / '1.jpg').read_bytes() == b'a'  # a folder named after the archive

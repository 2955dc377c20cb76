"""The official CycleGAN and pix2pix datasets and pretrained generators, fetched and unpacked into
the layout the scripts read; an archive fetched by hand is unpacked the same safe way.

    python tools/download.py dataset horse2zebra   # -> datasets/horse2zebra (dataset --list)
    python tools/download.py model horse2zebra     # -> pretrained/horse2zebra.pth
    python tools/download.py unpack FILE           # an archive fetched by hand

GAN_DOWNLOAD_URL names a mirror of the official host.
"""
import argparse, os, shutil, sys, tarfile, tempfile, time, urllib.request, zipfile

class DownloadError(Exception):
    """Reported as one line, never as a traceback."""

CYCLEGAN_DATASETS = ['apple2orange', 'summer2winter_yosemite', 'horse2zebra', 'monet2photo',
                     'cezanne2photo', 'ukiyoe2photo', 'vangogh2photo', 'maps', 'facades',
                     'iphone2dslr_flower', 'ae_photos', 'mini']
PIX2PIX_DATASETS = ['facades', 'maps', 'edges2shoes', 'edges2handbags', 'night2day',
                    'mini_pix2pix']
CYCLEGAN_MODELS = ['apple2orange', 'orange2apple', 'summer2winter_yosemite',
                   'winter2summer_yosemite', 'horse2zebra', 'zebra2horse', 'monet2photo',
                   'style_monet', 'style_cezanne', 'style_ukiyoe', 'style_vangogh', 'sat2map',
                   'map2sat', 'cityscapes_photo2label', 'cityscapes_label2photo',
                   'facades_photo2label', 'facades_label2photo', 'iphone2dslr_flower']
PIX2PIX_MODELS = ['edges2shoes', 'sat2map', 'map2sat', 'facades_label2photo', 'day2night']

def known_urls(kind):
    """Names clash between the collections (facades, maps, sat2map, ...): the pix2pix file keeps
    the plain name and the CycleGAN one is cyclegan_<name>. GAN_DOWNLOAD_URL names a mirror."""
    host = os.environ.get('GAN_DOWNLOAD_URL', 'http://efrosgans.eecs.berkeley.edu')
    if kind == 'dataset':
        cyclegan = {n: f"{host}/cyclegan/datasets/{n}.zip" for n in CYCLEGAN_DATASETS}
        pix2pix = {n: f"{host}/pix2pix/datasets/{n}.tar.gz" for n in PIX2PIX_DATASETS}
    else:
        cyclegan = {n: f"{host}/cyclegan/pretrained_models/{n}.pth" for n in CYCLEGAN_MODELS}
        pix2pix = {n: f"{host}/pix2pix/models-pytorch/{n}.pth" for n in PIX2PIX_MODELS}
    urls = {}
    for name, url in cyclegan.items():
        if name in pix2pix:
            name = 'cyclegan_' + name
        urls[name] = url
    return {**urls, **pix2pix}

def fetch(url, dest):
    """Download to a temporary file beside dest, showing progress; renamed only once complete."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.part-')
    try:
        with urllib.request.urlopen(url, timeout=60) as r, os.fdopen(fd, 'wb') as f:
            total, done, t0 = int(r.headers.get('Content-Length') or 0), 0, time.time()
            while chunk := r.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                rate = done / max(time.time() - t0, 1e-6)
                print(f"\r{url}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB, "
                      f"{rate / 2**20:.1f} MiB/s, ETA {max(total - done, 0) / rate:.0f} s  ",
                      end='', file=sys.stderr, flush=True)
        print(file=sys.stderr)
        if done < total:
            raise DownloadError(f"{url}: download cut short ({done} of {total} bytes); try again")
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:
        raise DownloadError(f"{url}: download failed ({getattr(e, 'reason', e)}); fetch it by hand "
                        f"and run 'python tools/download.py unpack FILE'") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

def check_members(archive, members):
    """Refuse the archive if any member could land outside the target: absolute paths, '..',
    links, devices."""
    for name, regular in members:
        parts = name.replace('\\', '/').split('/')
        if not regular or parts[0] == '' or '..' in parts or ':' in parts[0]:
            raise DownloadError(f"{archive}: unsafe member '{name}' (absolute path, '..', link or "
                            f"device); refusing to extract")

def unpack(archive, name=None, root='datasets'):
    """Extract a dataset archive into root/<name> through a temporary folder, refusing any member
    that could land outside it: absolute paths, '..', links, devices. name: the archive's, less its
    extensions. An archive of one folder (as the official ones) gives that folder's contents."""
    name = name or os.path.basename(archive).split('.')[0]
    if not name:  # '..zip', '.tar': the target would be root itself
        raise DownloadError(f"{archive}: no dataset name in this file name; rename it (NAME.zip)")
    if not os.path.isfile(archive):
        raise DownloadError(f"{archive}: no such file")
    if not zipfile.is_zipfile(archive) and not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive}: not a zip or tar archive")
    target = os.path.join(root, name)
    if os.path.exists(target):
        raise DownloadError(f"{target}: already exists; remove it to unpack again")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix='.unpack-')
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:  # the file type sits in external_attr's top bits
                members = [(m.filename, m.external_attr >> 28 in (0, 4, 8)) for m in z.infolist()]
                check_members(archive, members)
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                check_members(archive, [(m.name, m.isfile() or m.isdir()) for m in t.getmembers()])
                if hasattr(tarfile, 'data_filter'):  # Python 3.11.4+
                    t.extractall(tmp, filter='data')
                else:
                    t.extractall(tmp)
        top = [os.path.join(tmp, n) for n in os.listdir(tmp)]
        shutil.move(top[0] if len(top) == 1 and os.path.isdir(top[0]) else tmp, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise DownloadError(f"{archive}: not a readable zip or tar archive ({reason})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('command', choices=['dataset', 'model', 'unpack'])
    p.add_argument('name', nargs='?', help='dataset or model name; for unpack, the archive file')
    p.add_argument('--list', action='store_true', help='print the known names and exit')
    p.add_argument('--root', default=None,
                   help='destination folder (default datasets/ or pretrained/)')
    a = p.parse_args(argv)
    model = a.command == 'model'
    urls = known_urls('model' if model else 'dataset')
    root = a.root or ('pretrained' if model else 'datasets')
    if a.command == 'unpack' and a.name:
        print(unpack(a.name, root=root))
    elif a.command == 'unpack':
        sys.exit('error: unpack needs the archive: python tools/download.py unpack FILE')
    elif a.list or not a.name:
        print('\n'.join(sorted(urls)))
    elif a.name not in urls:
        raise DownloadError(f"unknown name '{a.name}'; 'python tools/download.py {a.command} "
                            f"--list' prints the known ones")
    elif model:
        fetch(urls[a.name], os.path.join(root, a.name + '.pth'))
        print(os.path.join(root, a.name + '.pth'))
    else:
        os.makedirs(root, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix='.download-') as tmp:
            archive = os.path.join(tmp, os.path.basename(urls[a.name]))
            fetch(urls[a.name], archive)
            print(unpack(archive, a.name, root))

if __name__ == '__main__':
    try:
        main()
    except DownloadError as e:
        sys.exit(f"error: {e}")

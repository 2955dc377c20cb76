"""The official CycleGAN and pix2pix datasets and generators and the FID Inception weights,
fetched and unpacked into the layout the scripts read; an archive fetched by hand, unpacked alike.

    python tools/download.py dataset horse2zebra   # -> datasets/horse2zebra (dataset --list)
    python tools/download.py model horse2zebra     # -> pretrained/horse2zebra.pth
    python tools/download.py model fid_inception   # -> torch's hub folder, where FID looks
    python tools/download.py unpack FILE           # an archive fetched by hand

Over https; a file is kept once whole (and its SHA-256 checked, where known), never over one
already there. GAN_DOWNLOAD_URL names a mirror: its scheme and host replace the official ones.
"""
import argparse, errno, functools, hashlib, http.client, os, shutil, ssl, sys, tarfile, tempfile
import time, urllib.error, urllib.parse, urllib.request, zipfile, zlib
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import cyclegan
from tools import fid

class DownloadError(Exception):
    """Reported as one line, never as a traceback."""

class Unreachable(DownloadError):
    """A download that failed on the way; args[0]: the error (may plain http get past it?)."""

HOST = 'https://efrosgans.eecs.berkeley.edu'
FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
           + fid.WEIGHTS_NAME)  # pytorch-fid's and torch-fidelity's file
# The SHA-256 of each file whose hash is known, by official URL: another file is not kept. The
# official host publishes none for its datasets and models: those are only checked to be whole.
SHA256 = {FID_URL: fid.WEIGHTS_SHA256}

CYCLEGAN_DATASETS = ['apple2orange', 'summer2winter_yosemite', 'horse2zebra', 'monet2photo',
                     'cezanne2photo', 'ukiyoe2photo', 'vangogh2photo', 'maps', 'facades',
                     'iphone2dslr_flower', 'ae_photos', 'mini']
PIX2PIX_DATASETS = ['facades', 'maps', 'edges2shoes', 'edges2handbags', 'night2day', 'mini_pix2pix']
CYCLEGAN_MODELS = ['apple2orange', 'orange2apple', 'summer2winter_yosemite',
                   'winter2summer_yosemite', 'horse2zebra', 'zebra2horse', 'monet2photo',
                   'style_monet', 'style_cezanne', 'style_ukiyoe', 'style_vangogh', 'sat2map',
                   'map2sat', 'cityscapes_photo2label', 'cityscapes_label2photo',
                   'facades_photo2label', 'facades_label2photo', 'iphone2dslr_flower']
PIX2PIX_MODELS = ['edges2shoes', 'sat2map', 'map2sat', 'facades_label2photo', 'day2night']

def known_urls(kind):
    """The official URL of each name. Names clash between the collections (facades, maps,
    sat2map, ...): the pix2pix file keeps the plain name and the CycleGAN one is cyclegan_<name>."""
    if kind == 'dataset':
        cyclegan = {n: f"{HOST}/cyclegan/datasets/{n}.zip" for n in CYCLEGAN_DATASETS}
        pix2pix = {n: f"{HOST}/pix2pix/datasets/{n}.tar.gz" for n in PIX2PIX_DATASETS}
    else:
        cyclegan = {n: f"{HOST}/cyclegan/pretrained_models/{n}.pth" for n in CYCLEGAN_MODELS}
        pix2pix = {n: f"{HOST}/pix2pix/models-pytorch/{n}.pth" for n in PIX2PIX_MODELS}
        pix2pix['fid_inception'] = FID_URL
    urls = {}
    for name, url in cyclegan.items():
        if name in pix2pix:
            name = 'cyclegan_' + name
        urls[name] = url
    return {**urls, **pix2pix}

def mirrored(url):
    """url at the mirror that GAN_DOWNLOAD_URL names, if any: its scheme and host, url's path."""
    mirror = os.environ.get('GAN_DOWNLOAD_URL')
    if not mirror:
        return url
    return mirror.rstrip('/') + urllib.parse.urlsplit(url).path

def http_fallback(url, sha256, error):
    """The http URL to try after an https download of url failed to connect or in TLS (error), or
    None; only for a file of known SHA-256, which then vouches for what came over plain http."""
    connection = isinstance(error, (ConnectionError, TimeoutError, ssl.SSLError))
    if url.startswith('https://') and sha256 and connection:
        return 'http://' + url.removeprefix('https://')
    return None

def read(r):
    """r's next bytes (b'' at its end); its OSError is Unreachable, not save_file's disk error."""
    try:
        return r.read1(1 << 20)  # what has arrived, up to 1 MiB: progress on slow links too
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(e) from None

def stream(url, sha256, f):
    """url into the open file f, progress on stderr; refused if cut short or of another SHA-256."""
    try:
        r = urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as e:  # an answer: 404, 500, ...
        raise Unreachable(e) from None
    except urllib.error.URLError as e:  # none: its reason is the socket's or TLS's error
        raise Unreachable(e.reason) from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # ValueError: not a URL
        raise Unreachable(e) from None
    with r:
        total, done, t0 = int(r.headers.get('Content-Length') or 0), 0, time.time()
        digest, shown = hashlib.sha256(), 0.0
        try:
            while chunk := read(r):
                f.write(chunk)  # (an OSError here is the disk's: save_file says so)
                digest.update(chunk)
                done += len(chunk)
                if time.time() - shown < 0.2 and done != total:  # (small chunks on fast links)
                    continue
                shown = time.time()
                rate = done / max(shown - t0, 1e-6)
                print(f"\r{url}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB, "
                      f"{rate / 2**20:.1f} MiB/s, ETA {max(total - done, 0) / rate:.0f} s  ",
                      end='', file=sys.stderr, flush=True)
        finally:
            print(file=sys.stderr)  # what follows (an error, Ctrl-C's line) on a line of its own
    if done < total:
        raise DownloadError(f"{url}: download cut short ({done} of {total} bytes); try again")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DownloadError(f"{url}: its SHA-256 is not the known one (a damaged or other file); "
                            f"nothing was kept; try again, without GAN_DOWNLOAD_URL if set")

def fetch(url, dest, by_hand, sha256=None):
    """url into dest through save_file: a private file beside it, renamed once whole and checked,
    never over an existing file. by_hand: what to do if it cannot be downloaded."""
    try:
        cyclegan.save_file(functools.partial(stream, url, sha256), dest)
    except Unreachable as e:
        plain = http_fallback(url, sha256, e.args[0])
        if plain is None:
            raise DownloadError(f"{url}: download failed ({e.args[0]}); {by_hand}") from None
        print(f"{url}: no https connection ({e.args[0]}); trying {plain}", file=sys.stderr)
        fetch(plain, dest, by_hand, sha256)

def make_folder(path, prefix=''):
    """path, made if need be, or with a prefix a new private folder in it; else one line why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DownloadError(f"{path}: a file, not a folder; give --root a folder")
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):  # (said before any download)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        if prefix:
            return tempfile.mkdtemp(dir=path, prefix=prefix)
    except OSError as e:
        raise DownloadError(f"{path}: cannot write in it ({e.strerror}); give --root a folder "
                            f"you can write in") from None
    return path

def check_members(archive, members):
    """Refuse the archive if a member could land outside the target: '/', '..', links, devices."""
    for name, regular in members:
        parts = name.replace('\\', '/').split('/')
        if not regular or parts[0] == '' or '..' in parts or ':' in parts[0]:
            raise DownloadError(f"{archive}: unsafe member '{name}' (absolute path, '..', link or "
                            f"device); refusing to extract")

def is_model_file(archive):
    """A torch checkpoint: .pth, .pt, or a zip with the '<name>/data.pkl' that torch.save writes."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):  # not a zip (a .pth of before torch 1.6, or no model)
        names = []
    return archive.lower().endswith(('.pth', '.pt')) or any(n.endswith('/data.pkl') for n in names)

def unpack(archive, name=None, root='datasets'):
    """Extract a dataset archive into root/<name> through a temporary folder, refusing any member
    that could land outside it: absolute paths, '..', links, devices. name: the archive's, less its
    extensions. An archive of one folder (as the official ones) gives that folder's contents."""
    name = name or os.path.basename(archive).split('.')[0]
    if not os.path.isfile(archive):
        raise DownloadError(f"{archive}: no such file")
    if is_model_file(archive):
        raise DownloadError(f"{archive}: a model file, not a dataset archive; put it in "
                            f"pretrained/ and give it to --ckpt")
    if not name:  # '..zip', '.tar': the target would be root itself
        raise DownloadError(f"{archive}: no dataset name in this file name; rename it (NAME.zip)")
    target = os.path.join(root, name)
    if os.path.lexists(target):
        raise DownloadError(f"{target}: already exists; remove it to unpack again")
    tmp = make_folder(root, '.unpack-')
    try:  # (tarfile.is_tarfile of a .tar.gz cut short in its first block raises EOFError)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:  # the file type sits in external_attr's top bits
                members = [(m.filename, m.external_attr >> 28 in (0, 4, 8)) for m in z.infolist()]
                check_members(archive, members)
                z.extractall(tmp)
        elif not tarfile.is_tarfile(archive):
            raise DownloadError(f"{archive}: not a zip or tar archive")
        else:
            with tarfile.open(archive) as t:
                check_members(archive, [(m.name, m.isfile() or m.isdir()) for m in t.getmembers()])
                if hasattr(tarfile, 'data_filter'):  # Python 3.11.4+
                    t.extractall(tmp, filter='data')
                else:
                    t.extractall(tmp)
        top = [os.path.join(tmp, n) for n in os.listdir(tmp)]
        shutil.move(top[0] if len(top) == 1 and os.path.isdir(top[0]) else tmp, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the disk's: full, read-only, ...
            raise DownloadError(f"{archive}: could not unpack it into {root} ({e.strerror}); "
                                f"nothing was kept") from None
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]  # cut short, damaged
        raise DownloadError(f"{archive}: not a readable zip or tar archive ({reason})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('command', choices=['dataset', 'model', 'unpack'])
    p.add_argument('name', nargs='?', help='dataset or model name; for unpack, the archive file')
    p.add_argument('--list', action='store_true', help='print the known names and exit')
    p.add_argument('--root', help="destination folder (default: datasets/, pretrained/, torch hub)")
    a = p.parse_args(argv)
    model = a.command == 'model'
    urls = known_urls('model' if model else 'dataset')
    root = a.root or ('pretrained' if model else 'datasets')
    url = urls.get(a.name)
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
        dest = os.path.join(root, a.name + '.pth')
        if a.name == 'fid_inception':  # under its own name, by default where FID looks for it
            dest = os.path.join(a.root or os.path.dirname(fid.default_weights()), fid.WEIGHTS_NAME)
        if os.path.lexists(dest):  # (a dangling link too: save_file would not write through it)
            raise DownloadError(f"{dest} exists; remove it to download it again")
        make_folder(os.path.dirname(dest))
        fetch(mirrored(url), dest, f"fetch it by hand into {dest}", SHA256.get(url))
        print(dest)
    else:
        target = os.path.join(root, a.name)
        if os.path.lexists(target):
            raise DownloadError(f"{target} exists; remove it to download it again")
        tmp = make_folder(root, '.download-')
        try:
            archive = os.path.join(tmp, os.path.basename(url))
            fetch(mirrored(url), archive, "fetch it by hand and run 'python tools/download.py "
                                          "unpack FILE'", SHA256.get(url))
            print(unpack(archive, a.name, root))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__':
    try:
        main()
    except DownloadError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # save_file and the temporary folders have removed what was begun
        print("interrupted; no half-written file was kept", file=sys.stderr)
        sys.exit(130)
